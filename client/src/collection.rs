//! Collections: the employee types their own number on the vault's page;
//! payroll asks for it and receives tokens, never the number.

use futures::{Stream, StreamExt};
use mnvault_proto::v1 as pb;

pub use mnvault_proto::v1::{CollectedNumber, Collection, CollectionState, CreateCollectionResponse};

use crate::{ClientError, VaultClient};

/// What payroll asks for.
#[derive(Debug, Clone, Default)]
pub struct NewCollection {
    /// Payroll's own reference for the person (an employee code; never a number).
    pub reference: String,
    /// Whose numbers, in order: `employee`, `spouse`, `child`, `parent`,
    /// `grandparent`, `grandchild`, `sibling`, `dependant`.
    pub relations: Vec<String>,
    /// Why (purpose ids); the page shows them.
    pub purposes: Vec<String>,
    /// Lifetime of the link in seconds; 0 for the vault's default (seven days).
    pub lifetime_seconds: u64,
    /// A re-issue: the token whose number the municipality replaced (then
    /// exactly one relation). The new number goes under this same token;
    /// the old one is kept under `Collection::superseded_token`.
    pub reissue_token: Option<String>,
}

impl VaultClient {
    /// Opens a collection; the answer holds the one-time link to hand to the
    /// employee (shown once: the vault keeps only a keyed hash of it).
    pub async fn create_collection(
        &self,
        tenant: &str,
        asked: NewCollection,
    ) -> Result<CreateCollectionResponse, ClientError> {
        let request = pb::CreateCollectionRequest {
            tenant: tenant.to_owned(),
            reference: asked.reference,
            relations: asked.relations,
            purposes: asked.purposes,
            lifetime_seconds: asked.lifetime_seconds,
            reissue_token: asked.reissue_token.unwrap_or_default(),
        };
        Ok(self.collections.clone().create_collection(request).await?.into_inner())
    }

    /// A collection's state and, once submitted, its tokens.
    pub async fn collection(&self, tenant: &str, collection_id: &str) -> Result<Collection, ClientError> {
        let request = pb::GetCollectionRequest { tenant: tenant.to_owned(), collection_id: collection_id.to_owned() };
        Ok(self.collections.clone().get_collection(request).await?.into_inner())
    }

    /// Each of the collections once it is submitted, cancelled or expired;
    /// the stream ends when all have been sent (or at the vault's request
    /// timeout: watch the rest again).
    pub async fn watch_collections(
        &self,
        tenant: &str,
        collection_ids: Vec<String>,
    ) -> Result<impl Stream<Item = Result<Collection, ClientError>>, ClientError> {
        let request = pb::WatchCollectionsRequest { tenant: tenant.to_owned(), collection_ids };
        let stream = self.collections.clone().watch_collections(request).await?.into_inner();
        Ok(stream.map(|item| item.map_err(ClientError::from)))
    }

    /// Cancels an open collection: its link stops working at once.
    pub async fn cancel_collection(&self, tenant: &str, collection_id: &str) -> Result<Collection, ClientError> {
        let request =
            pb::CancelCollectionRequest { tenant: tenant.to_owned(), collection_id: collection_id.to_owned() };
        Ok(self.collections.clone().cancel_collection(request).await?.into_inner())
    }
}
