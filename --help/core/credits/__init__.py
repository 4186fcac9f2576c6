"""Money rules: the credit ledger, budgets, prices, refunds and the period calendar."""
