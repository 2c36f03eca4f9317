"""ClickHouse storage: one client for embedded chdb and servers, migrations, batched writer."""
