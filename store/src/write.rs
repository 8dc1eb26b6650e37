//! A write transaction handed to code outside the store: the callers pass its [`Tx`] to the
//! repositories and commit, without knowing which backend runs underneath.

use crate::{BeginWrite, Db, Store, StoreError, Tx};

/// An open write transaction (`BEGIN IMMEDIATE` on SQLite, see [`BeginWrite`]).
#[derive(Debug)]
pub struct WriteTx {
    inner: Inner,
}

#[derive(Debug)]
enum Inner {
    Postgres(sqlx::Transaction<'static, sqlx::Postgres>),
    Sqlite(sqlx::Transaction<'static, sqlx::Sqlite>),
}

impl WriteTx {
    /// The transaction, for the repositories' methods.
    pub fn tx(&mut self) -> Tx<'_> {
        match &mut self.inner {
            Inner::Postgres(tx) => Tx::Postgres(tx),
            Inner::Sqlite(tx) => Tx::Sqlite(tx),
        }
    }

    pub async fn commit(self) -> Result<(), StoreError> {
        match self.inner {
            Inner::Postgres(tx) => tx.commit().await?,
            Inner::Sqlite(tx) => tx.commit().await?,
        }
        Ok(())
    }
}

impl Store {
    /// Opens a write transaction; dropped without [`WriteTx::commit`], it rolls back.
    pub async fn begin_write(&self) -> Result<WriteTx, StoreError> {
        let inner = match self.db() {
            Db::Postgres(pool) => Inner::Postgres(pool.begin_write().await?),
            Db::Sqlite(pool) => Inner::Sqlite(pool.begin_write().await?),
        };
        Ok(WriteTx { inner })
    }
}
