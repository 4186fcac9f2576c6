"""All SQL: the database, migrations, and the store interfaces with their SQLite implementation.

``base`` holds the store protocols domain code is typed by; ``sqlite.SqliteStores`` builds every SQLite
store of one database (``SqliteStores.open(settings)``: the bot, the command line and the tests); ``db``
opens and migrates the file and holds the transaction helpers; ``checkpoints`` keeps the running bot's
write-ahead log short from a thread of its own; one module per concern holds its store
class (``ledger``, ``budgets``, ``jobs``, ``gateway_account``, ``places``, ``relay``, ``thumbnails``,
``secrets``, ``dashboard``, ``installations`` with its ``secretbox``). Nothing outside this package
imports ``sqlite3`` or ``sqlite_utils``, writes SQL, or calls ``transaction``/``snapshot``
(``tests/test_layout.py`` checks it).

The rules every store class keeps, so that another database (PostgreSQL) can run the same classes behind
an adapter with the same four entry points:

1. **Four entry points only.** Every statement goes through the ``db`` object it was given:
   ``db.execute(sql, params)`` (returns a DB-API cursor: ``fetchone``, ``fetchall``, ``rowcount``) and
   ``db.query(sql, params)`` (yields each row as a ``dict``); every write is inside
   ``with transaction(db):`` and a consistent multi-statement read inside ``with snapshot(db):`` (both
   from ``core.storage.db``; nested use joins the outer one). Nothing else of sqlite-utils or sqlite3
   (no ``db[table].insert``, no ``db.conn``) outside ``db.py`` and ``SqliteStores``.
2. **Placeholders are ``?``**, positional, params a list; table and column names are never user input
   (f-strings only join known column names and ``?`` marks).
3. **Portable SQL**, the subset SQLite (3.35+) and PostgreSQL both accept: ``INSERT ... ON CONFLICT (...)
   DO NOTHING`` / ``DO UPDATE SET col = excluded.col`` (never ``INSERT OR IGNORE/REPLACE``), ``RETURNING``,
   ``COALESCE``, ``CASE``, ``substr``, ``SAVEPOINT`` / ``ROLLBACK TO`` / ``RELEASE``; no SQLite-only
   functions (``julianday``, ``strftime``, ``datetime()``, ``ifnull``, ``instr``, ``json_extract``), no
   ``rowid``; the column ``accounts."user"`` is quoted (a reserved word in PostgreSQL). The one exception
   is named in ``jobs``: ``SCOPE_SQL`` and ``CHANNEL_SQL`` (JSON and string functions differ), which
   another dialect spells its own way.
4. **Times are ISO 8601 text in UTC** (``iso()``, millisecond precision), compared as text; booleans are
   integers 0/1; JSON is text.
5. **Transactions are short and owned by the store**: each public method is one transaction of its own
   (joining a caller's), and money moves (reserve, capture, release) move the balance and every budget in
   that one transaction. What spans stores (reserve + insert the job, delivered + capture, failed +
   release) is ``Stores.transaction()``. The money moves themselves are ``transaction(db, rows=True)``:
   each row they decide on is read with ``for_update(db)`` (the account, then the budgets), and their
   writes whose results nobody reads go through ``later(db, ...)`` (PostgreSQL sends them with the
   commit). A busy lock raises ``core.errors.DatabaseBusy``; a closed database
   ``core.storage.errors.StoreClosed``; a taken dedupe key ``DuplicateRequest``.
6. **Migrations** are numbered functions in ``db.py`` (SQLite DDL); PostgreSQL keeps its own list with the
   same names, tables and columns (``postgres.MIGRATIONS``; ``tests/test_postgres.py`` compares them).

PostgreSQL is that other database (``DATABASE_URL``): ``postgres.PgDatabase`` has the four entry points
(``?`` becomes ``%s``; ``transaction`` takes an advisory write lock, SQLite's ``BEGIN IMMEDIATE``), so the
store classes above run on it unchanged; ``open_database`` picks. Its migrations define ``instr`` and
``json_extract`` as SQL functions, so ``SCOPE_SQL`` and ``CHANNEL_SQL`` run there as written. The only
dialect helpers are ``db.skip_locked`` (claims), ``db.notify``/``db.listen`` (the relay's wake-up).
"""
