//! Which failures of a batch are the database's for a while, retried with a backoff ([`transient`]),
//! which last until an operator acts ([`lasting`]: retried, the consumer reported failing), and which are
//! its messages', isolated and dead-lettered: as the consume loop asks ([`own`]: known to be theirs).

/// Whether a failure is the database's for a while rather than the batch's: PostgreSQL unreachable
/// ([`tributary_store::db::unreachable`]), or a serialization failure or deadlock, a server out of
/// resources or in trouble (SQLSTATE classes 40, 53, 57, 58 and `55P03` lock not available). Such
/// failures are retried with a backoff and never dead-letter anything; any other failure is isolated to
/// its messages. One code of those classes is isolated too, since one message's own work can cause it on
/// every try: `53200`, out of memory or of lock table (an index over thousands of constituents on a
/// small server). Retried as transient, such a message held back its batch-mates and paused the consumer
/// for ever, without the consumer ever counting as failing; isolated, it is dead-lettered while others
/// commit, and kept (the consumer failing) when nothing does. (`57014`, a statement cancelled, stays
/// transient: under an operator's `statement_timeout` a statement waiting on another's lock is cancelled
/// too, through no fault of its message.)
pub fn transient(error: &tributary_broker::HandleError) -> bool {
    /// The code of the transient classes that one message's own work can cause on every try.
    const OWN_WORK: &str = "53200";
    use sea_orm::sqlx::Error;
    error.0.chain().any(|cause| match cause.downcast_ref::<Error>() {
        Some(e) if tributary_store::db::unreachable(e) => true,
        Some(Error::Database(d)) => d.code().is_some_and(|c| {
            let class = ["40", "53", "57", "58"].iter().any(|class| c.starts_with(class));
            (class && c != OWN_WORK) || c == "55P03"
        }),
        Some(_) => false,
        None => cause.is::<std::io::Error>(),
    })
}

/// Whether a failure lasts until an operator acts: a price batch refused because another processor
/// changed the derived windows ([`crate::prices::WindowsChanged`]), or a statement the schema, the grants
/// or the server's role refuse (SQLSTATE classes 42, syntax or access rule, and 3F, schema: a revoked
/// grant, a table or column missing in a rolling migration; `25006`, a read-only transaction: a server
/// that a failover made a standby, or a database URL naming a replica). Every statement here is fixed
/// text, so no message's content causes those. No message of it is at fault, so it is kept like a
/// transient one, and the consumer reports failing until the cause is gone. (Isolated, a failure of every
/// write on a quiet stream dead-lettered each good message that failed alone after earlier commits.)
pub fn lasting(error: &tributary_broker::HandleError) -> bool {
    use sea_orm::sqlx::Error;
    error.0.chain().any(|cause| {
        cause.is::<crate::prices::WindowsChanged>()
            || matches!(cause.downcast_ref::<Error>(), Some(Error::Database(d))
                if d.code().is_some_and(|c| c.starts_with("42") || c.starts_with("3F") || c == "25006"))
    })
}

/// Whether a failure is known to be its messages' own, whatever else fails or commits: a fleet change that
/// would take the plan past `processor.fleet_max_pairs` ([`crate::fleet::TooLarge`]). A message failing
/// alone with it is dead-lettered even when nothing else commits (a quiet stream after a restart kept it
/// and retried it for ever, the consumer reported failing).
pub fn own(error: &tributary_broker::HandleError) -> bool {
    use crate::fleet::FleetError;
    error.0.chain().any(|cause| matches!(cause.downcast_ref::<FleetError>(), Some(FleetError::TooLarge(_))))
}

#[cfg(test)]
mod tests {
    use super::transient;
    use tributary_broker::HandleError;
    use tributary_store::sqlx::Error;

    fn failed(e: impl std::error::Error + Send + Sync + 'static) -> HandleError {
        HandleError(anyhow::Error::new(e).context("storing a batch"))
    }

    /// As `commit_in_span` wraps it: the refusal inside the fleet's error, under the batch's context.
    #[test]
    fn a_fleet_past_its_bound_is_its_messages_own_failure() {
        use crate::fleet::{FleetError, TooLarge};
        let too_large = FleetError::from(TooLarge { drivers: 2, shipments: 4, size: 8, max: 6 });
        assert!(super::own(&failed(too_large)));
        assert!(!super::own(&failed(FleetError::from(Error::RowNotFound))));
        assert!(!super::own(&failed(Error::RowNotFound)));
        // The database's failures inside the fleet's error are still found for what they are.
        assert!(super::transient(&failed(FleetError::from(Error::PoolTimedOut))));
    }

    #[test]
    fn an_unreachable_database_is_transient_and_a_failed_statement_is_not() {
        assert!(transient(&failed(Error::PoolTimedOut)));
        assert!(transient(&failed(Error::Io(std::io::ErrorKind::ConnectionReset.into()))));
        assert!(transient(&failed(std::io::Error::from(std::io::ErrorKind::BrokenPipe))));
        assert!(!transient(&failed(Error::RowNotFound)));
        assert!(!transient(&failed(Error::ColumnNotFound("x".into()))));
    }
}
