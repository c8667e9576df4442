//! Store steps of the incident report (`mnvault audit report`).
//!
//! Each step is one statement over the entries a [`ReportFilter`] selects:
//! an operation and time range (index on `(operation, time)`), refusals in a
//! time range (partial index on `time` where `outcome <> 'ok'`), a tenant
//! and time range (index on `(tenant, time)`), joined to their tokens by
//! position. The store counts; what counts as a release, a refusal or a
//! change is the core's ([`crate::audit::report`]).

use async_trait::async_trait;

use super::StoreError;
use crate::audit::report::{Grouping, ReleasedToken, ReportEntry, ReportFilter, ReportGroup};

/// Read steps of the incident report; every [`super::ReadTx`] offers them.
#[async_trait]
pub trait ReportReadTx: Send {
    /// The entries `filter` selects, joined to the tokens they name, grouped
    /// as `by` says and sorted by those columns: per group, distinct tokens
    /// (a token counted once per tenant: group by tenant), token rows,
    /// entries, and the first and last entry's time. Entries naming no
    /// token are not counted. At most `limit` groups.
    async fn report_token_groups(
        &mut self,
        filter: &ReportFilter,
        by: Grouping,
        limit: u32,
    ) -> Result<Vec<ReportGroup>, StoreError>;

    /// The entries `filter` selects, grouped as `by` says and sorted by
    /// those columns: per group, entries, the sum of their record counts
    /// (as `numbers`) and the first and last entry's time. Grouped by
    /// nothing, one group, with 0 entries when none matched. At most `limit`
    /// groups.
    async fn report_entry_groups(
        &mut self,
        filter: &ReportFilter,
        by: Grouping,
        limit: u32,
    ) -> Result<Vec<ReportGroup>, StoreError>;

    /// The first `limit` entries `filter` selects, in sequence order,
    /// without their tokens.
    async fn report_entries(&mut self, filter: &ReportFilter, limit: u32) -> Result<Vec<ReportEntry>, StoreError>;

    /// Every distinct (tenant, token) the entries `filter` selects name,
    /// sorted by tenant then token, each with the number of those entries
    /// naming it and their first and last time, handed to `each` as the
    /// rows arrive (one statement, never all in memory); stops early when
    /// `each` says `false`. Returns how many were handed over.
    async fn report_tokens(
        &mut self,
        filter: &ReportFilter,
        each: &mut (dyn FnMut(ReleasedToken) -> bool + Send),
    ) -> Result<u64, StoreError>;
}
