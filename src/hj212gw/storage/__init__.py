"""PostgreSQL storage: asyncpg pool, SQL, migrations, embedded server. No HJ 212 parsing."""
