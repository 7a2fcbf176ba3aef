//! Array arguments for `unnest`: a batch's rows bound column by column.
//!
//! The bulk statements take each column of a batch as one array (`unnest($1::text[], $2::timestamptz[])`):
//! one round trip and one plan whatever the batch's size. [`Arrays`] builds those arguments from the rows
//! and one accessor per column, so a statement's caller names each column once, in `$n` order, where it
//! used to collect a vector per column and bind each in turn.

use sea_orm::sqlx::error::BoxDynError;
use sea_orm::sqlx::postgres::{PgArguments, Postgres};
use sea_orm::sqlx::{self, Arguments, Encode, Type};

/// Query arguments from `rows`: `$1`, `$2`, ... in the order of the calls, each column an array.
pub(crate) struct Arrays<'r, R> {
    rows: Vec<&'r R>,
    args: Result<PgArguments, BoxDynError>,
}

impl<'r, R> Arrays<'r, R> {
    /// No arguments yet, over `rows`.
    pub(crate) fn of(rows: impl IntoIterator<Item = &'r R>) -> Self {
        Arrays { rows: rows.into_iter().collect(), args: Ok(PgArguments::default()) }
    }

    /// Whether there are no rows.
    pub(crate) fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The next argument: `column` of every row, an array.
    pub(crate) fn column<'t, T>(self, column: impl Fn(&'r R) -> T) -> Self
    where
        Vec<T>: Encode<'t, Postgres> + Type<Postgres>,
    {
        let array: Vec<T> = self.rows.iter().map(|r| column(r)).collect();
        self.value(array)
    }

    /// The next argument: one `value` for every row (a width, say).
    pub(crate) fn value<'t, T: Encode<'t, Postgres> + Type<Postgres>>(mut self, value: T) -> Self {
        if let Ok(args) = &mut self.args
            && let Err(e) = args.add(value)
        {
            self.args = Err(e);
        }
        self
    }

    /// The arguments, for `sqlx::query_with` (or `query_as_with`).
    ///
    /// # Errors
    /// [`sqlx::Error::Encode`] when a value did not encode (an array longer than PostgreSQL takes, say).
    pub(crate) fn done(self) -> Result<PgArguments, sqlx::Error> {
        self.args.map_err(sqlx::Error::Encode)
    }
}
