//! Steps of the incident report, passed on with their failures counted.

use async_trait::async_trait;
use mnvault_core::audit::report::{Grouping, ReleasedToken, ReportEntry, ReportFilter, ReportGroup};
use mnvault_core::store::{ReadTx, ReportReadTx, StoreError};

use super::MeteredTx;

#[async_trait]
impl<T: ReadTx + ?Sized> ReportReadTx for MeteredTx<T> {
    async fn report_token_groups(
        &mut self,
        filter: &ReportFilter,
        by: Grouping,
        limit: u32,
    ) -> Result<Vec<ReportGroup>, StoreError> {
        let result = self.inner.report_token_groups(filter, by, limit).await;
        self.metrics.counted(result)
    }

    async fn report_entry_groups(
        &mut self,
        filter: &ReportFilter,
        by: Grouping,
        limit: u32,
    ) -> Result<Vec<ReportGroup>, StoreError> {
        let result = self.inner.report_entry_groups(filter, by, limit).await;
        self.metrics.counted(result)
    }

    async fn report_entries(&mut self, filter: &ReportFilter, limit: u32) -> Result<Vec<ReportEntry>, StoreError> {
        let result = self.inner.report_entries(filter, limit).await;
        self.metrics.counted(result)
    }

    async fn report_tokens(
        &mut self,
        filter: &ReportFilter,
        each: &mut (dyn FnMut(ReleasedToken) -> bool + Send),
    ) -> Result<u64, StoreError> {
        let result = self.inner.report_tokens(filter, each).await;
        self.metrics.counted(result)
    }
}
