//! A fresh database per test, from a template migrated once per schema version.

use sea_orm::sqlx::{self, Connection, PgConnection};
use sea_orm_migration::MigratorTrait;
use tributary_store::{DbConfig, Migrator, migrations::schema_sql};

/// A database that exists for one test and is dropped after it.
pub struct TestDb {
    admin: String,
    name: String,
    url: String,
}

fn admin_url() -> String {
    std::env::var("TEST_DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

fn with_db(admin: &str, name: &str) -> String {
    let (base, query) = admin.split_once('?').map_or((admin, None), |(b, q)| (b, Some(q)));
    let server = base.rsplit_once('/').map_or(base, |(s, _)| s);
    match query {
        Some(q) => format!("{server}/{name}?{q}"),
        None => format!("{server}/{name}"),
    }
}

/// FNV-1a 64 of the schema: the template's version.
fn schema_hash() -> u64 {
    tributary_broker::hash::fnv1a(&[schema_sql().concat().as_bytes()])
}

impl TestDb {
    /// Creates a fresh, migrated database.
    pub async fn create() -> TestDb {
        let admin = admin_url();
        let hash = schema_hash();
        let template = format!("tributary_tpl_{:016x}", hash);
        let mut conn =
            PgConnection::connect(&admin).await.expect("connecting to the test PostgreSQL (TEST_DATABASE_URL)");
        sqlx::query("SELECT pg_advisory_lock($1)").bind(hash as i64).execute(&mut conn).await.expect("template lock");
        let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(&template)
            .fetch_one(&mut conn)
            .await
            .expect("looking up the template");
        if !exists {
            // Migrate under a temporary name, then rename: a failed migration never leaves a template.
            let tmp = crate::unique("tributary_tplbuild");
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {tmp}")))
                .execute(&mut conn)
                .await
                .expect("creating the template");
            let db = tributary_store::connect(&DbConfig {
                url: with_db(&admin, &tmp),
                max_connections: 1,
                ..Default::default()
            })
            .await
            .expect("connecting to the template");
            Migrator::up(&db, None).await.expect("migrating the template");
            db.close().await.expect("closing the template");
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!("ALTER DATABASE {tmp} RENAME TO {template}")))
                .execute(&mut conn)
                .await
                .expect("naming the template");
        }
        sqlx::query("SELECT pg_advisory_unlock($1)")
            .bind(hash as i64)
            .execute(&mut conn)
            .await
            .expect("template unlock");
        let name = crate::unique("tributary_test");
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name} TEMPLATE {template}")))
            .execute(&mut conn)
            .await
            .expect("creating the test database");
        let _ = conn.close().await;
        let url = with_db(&admin, &name);
        TestDb { admin, name, url }
    }

    /// The database's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let (admin, name) = (self.admin.clone(), self.name.clone());
        // Drop may run inside a runtime: do the async work on a thread of its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            rt.block_on(async {
                if let Ok(mut c) = PgConnection::connect(&admin).await {
                    let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")))
                        .execute(&mut c)
                        .await;
                }
            })
        })
        .join();
    }
}
