"""All SQL: the database, migrations, and the store interfaces with their SQLite implementation."""
