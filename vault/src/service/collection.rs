//! `CollectionService`: payroll asks for an employee's number and receives
//! tokens. The rules are in `mnvault_core::collection`; this module
//! translates. The page the employee types on is `crate::collect_page`.

use std::time::Duration;

use mnvault_core::audit::{AuditDraft, Operation};
use mnvault_core::clock;
use std::sync::Arc;

use mnvault_core::collection::{
    note_fetched, Collection, CollectionRequest, CollectionState, LinkOutcome, LinkSecret, Relation, SubmitOutcome,
    UnusableLink,
};
use mnvault_core::id::{CollectionId, TenantId, Token};
use mnvault_core::number::MyNumber;
use mnvault_core::purpose::Purpose;
use mnvault_core::text::FreeText;
use mnvault_proto::v1 as pb;
use pb::collection_service_server::CollectionService;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::{Request, Response, Status};
use tracing::Instrument as _;

use super::wire::timestamp;
use super::{Context, Feed, ResponseStream, VaultContext};
use crate::error::VaultError;

/// How often a watch reads its collections again.
const WATCH_POLL: Duration = Duration::from_secs(1);

/// The collection service.
pub struct CollectionApi {
    ctx: Context,
    /// The page's public origin (`[collection] public_url`); `None` when the
    /// vault serves no page, and then no collection can be asked for.
    page_url: Option<String>,
}

impl CollectionApi {
    /// The service over `ctx`, handing out links to the page at `page_url`.
    pub fn new(ctx: Context, page_url: Option<String>) -> Self {
        Self { ctx, page_url }
    }

    /// The page's origin, or the refusal of a vault that serves none.
    fn page_url(&self) -> Result<&str, VaultError> {
        self.page_url.as_deref().ok_or_else(|| {
            VaultError::FailedPrecondition(
                "this vault serves no collection page, so no link could be opened: its operator sets [collection] \
                 listen and public_url"
                    .into(),
            )
        })
    }
}

fn wire_state(state: CollectionState) -> pb::CollectionState {
    match state {
        CollectionState::Open => pb::CollectionState::Open,
        CollectionState::Submitted => pb::CollectionState::Submitted,
        CollectionState::Cancelled => pb::CollectionState::Cancelled,
        CollectionState::Expired => pb::CollectionState::Expired,
    }
}

/// The collection as the API shows it.
fn wire_collection(collection: &Collection, now: i64) -> pb::Collection {
    let state = collection.state(now);
    pb::Collection {
        collection_id: collection.id.to_string(),
        tenant: collection.tenant.to_string(),
        reference: collection.reference.to_string(),
        state: wire_state(state).into(),
        numbers: collection
            .asked
            .iter()
            .enumerate()
            .map(|(position, relation)| pb::CollectedNumber {
                relation: relation.id().to_owned(),
                token: collection.tokens.get(position).map(|t| t.to_string()).unwrap_or_default(),
            })
            .collect(),
        purposes: collection.purposes.iter().map(|p| p.id().to_owned()).collect(),
        created_by: collection.created_by.to_string(),
        created_at: Some(timestamp(collection.created_at)),
        expires_at: Some(timestamp(collection.expires_at)),
        settled_at: match state {
            CollectionState::Open => None,
            // An open one found expired settles at its expiry.
            CollectionState::Expired => Some(timestamp(collection.expires_at)),
            _ => Some(timestamp(collection.settled_at)),
        },
        reissue_token: collection.reissue.as_ref().map(|r| r.token.to_string()).unwrap_or_default(),
        superseded_token: collection
            .reissue
            .as_ref()
            .and_then(|r| r.superseded.as_ref())
            .map(|t| t.to_string())
            .unwrap_or_default(),
    }
}

fn collection_request(request: &pb::CreateCollectionRequest) -> Result<CollectionRequest, VaultError> {
    // Bounded before anything is parsed.
    let max = mnvault_core::collection::MAX_ASKED;
    VaultContext::check_count(request.relations.len(), max, "relations", "(the collection maximum)")?;
    VaultContext::check_count(request.purposes.len(), Purpose::ALL.len(), "purposes", "(every purpose once)")?;
    let lifetime_ms = match request.lifetime_seconds {
        0 => None,
        seconds => Some(i64::try_from(seconds.saturating_mul(1000)).unwrap_or(i64::MAX)),
    };
    Ok(CollectionRequest {
        reference: FreeText::parse(&request.reference, "reference")?,
        asked: request.relations.iter().map(|r| Relation::parse(r)).collect::<Result<_, _>>()?,
        purposes: request.purposes.iter().map(|p| p.parse::<Purpose>()).collect::<Result<_, _>>()?,
        lifetime_ms,
        reissue: super::wire::optional(&request.reissue_token, Token::parse)?,
    })
}

fn collection_ids(ids: &[String]) -> Result<Vec<CollectionId>, VaultError> {
    let max = mnvault_core::collection::MAX_WATCHED;
    VaultContext::check_count(ids.len(), max, "collection ids", "(the watch maximum)")?;
    ids.iter().map(|id| CollectionId::parse(id).map_err(VaultError::from)).collect()
}

#[tonic::async_trait]
impl CollectionService for CollectionApi {
    async fn create_collection(
        &self,
        request: Request<pb::CreateCollectionRequest>,
    ) -> Result<Response<pb::CreateCollectionResponse>, Status> {
        let mut draft = AuditDraft::new(Operation::CreateCollection);
        let caller = self.ctx.authenticate(&request, &mut draft).await?;
        let request = request.into_inner();
        let result = async {
            let tenant = TenantId::parse(&request.tenant)?;
            draft.tenant = Some(tenant.clone());
            // No page, no link: refused before anything is stored.
            let page_url = self.page_url()?;
            let asked = collection_request(&request)?;
            let (collection, secret) = self.ctx.core.create_collection(&caller, &tenant, &asked, &mut draft).await?;
            Ok((collection, format!("{}/c/{}", page_url.trim_end_matches('/'), secret.expose())))
        }
        .await;
        let (collection, link) = self.ctx.settled(draft, result).await?;
        Ok(Response::new(pb::CreateCollectionResponse {
            collection: Some(wire_collection(&collection, clock::now_ms())),
            link,
        }))
    }

    async fn get_collection(
        &self,
        request: Request<pb::GetCollectionRequest>,
    ) -> Result<Response<pb::Collection>, Status> {
        let mut draft = AuditDraft::new(Operation::GetCollection);
        let caller = self.ctx.authenticate(&request, &mut draft).await?;
        let result = async {
            let tenant = TenantId::parse(&request.get_ref().tenant)?;
            draft.tenant = Some(tenant.clone());
            let id = CollectionId::parse(&request.get_ref().collection_id)?;
            let mut found = self.ctx.core.collections(&caller, &tenant, &[id], &mut draft).await?;
            found.pop().ok_or(VaultError::Internal)
        }
        .await;
        let collection = self.ctx.audited(draft, result).await?;
        Ok(Response::new(wire_collection(&collection, clock::now_ms())))
    }

    type WatchCollectionsStream = ResponseStream<pb::Collection>;

    async fn watch_collections(
        &self,
        request: Request<pb::WatchCollectionsRequest>,
    ) -> Result<Response<Self::WatchCollectionsStream>, Status> {
        let mut draft = AuditDraft::new(Operation::WatchCollections);
        let (caller, serial) = self.ctx.authenticate_certified(&request, &mut draft).await?;
        let parsed = async {
            let tenant = TenantId::parse(&request.get_ref().tenant)?;
            draft.tenant = Some(tenant.clone());
            let ids = collection_ids(&request.get_ref().collection_ids)?;
            // Checks role, tenant and that every one exists, before the
            // stream starts; what it read is the first poll.
            let mut scratch = draft.clone();
            let found = self.ctx.core.collections(&caller, &tenant, &ids, &mut scratch).await?;
            Ok((tenant, ids, found))
        }
        .await;
        let (tenant, mut waiting, first) = match parsed {
            Ok(parsed) => parsed,
            Err(error) => return Err(self.ctx.refuse(draft, error).await),
        };
        let ctx = self.ctx.clone();
        let (feed, responses) = Feed::new(waiting.len(), ctx.limits().stream_send_timeout());
        // A watch lasts at most the request timeout, and no longer than its client.
        let deadline = tokio::time::Instant::now() + ctx.limits().request_timeout() * 9 / 10;
        tokio::spawn(
            async move {
                let mut first = Some(first);
                loop {
                    let found = match first.take() {
                        Some(found) => found,
                        None => {
                            // A revoked certificate stops the watch at its next read.
                            let mut scratch = draft.clone();
                            let read = match ctx.recheck(&caller, serial.as_ref(), Operation::WatchCollections) {
                                Ok(()) => ctx.core.collections(&caller, &tenant, &waiting, &mut scratch).await,
                                Err(refused) => Err(refused),
                            };
                            match read {
                                Ok(found) => found,
                                Err(error) => {
                                    let _ = feed.send(Err(ctx.refuse(draft.clone(), error).await)).await;
                                    return;
                                }
                            }
                        }
                    };
                    let now = clock::now_ms();
                    let settled: Vec<Collection> = found.into_iter().filter(|c| c.state(now).is_final()).collect();
                    if !settled.is_empty() {
                        // Audited before the tokens leave.
                        let mut sent = draft.clone();
                        note_fetched(&mut sent, &settled, now);
                        if let Err(status) = ctx.audited(sent, Ok(())).await {
                            let _ = feed.send(Err(status)).await;
                            return;
                        }
                        for collection in &settled {
                            waiting.retain(|id| *id != collection.id);
                            if feed.send(Ok(wire_collection(collection, now))).await.is_err() {
                                return;
                            }
                        }
                    }
                    if waiting.is_empty() {
                        feed.finish();
                        return;
                    }
                    if tokio::time::Instant::now() + WATCH_POLL >= deadline {
                        let status = Status::deadline_exceeded(
                            "the watch ran for the vault's request timeout (limits.request_timeout_ms); watch the \
                             collections still open again",
                        );
                        let _ = feed.send(Err(status)).await;
                        return;
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(WATCH_POLL) => {}
                        _ = feed.closed() => return,
                        _ = ctx.stopping.cancelled() => return,
                    }
                }
            }
            .instrument(tracing::Span::current()),
        );
        Ok(Response::new(responses))
    }

    async fn cancel_collection(
        &self,
        request: Request<pb::CancelCollectionRequest>,
    ) -> Result<Response<pb::Collection>, Status> {
        let mut draft = AuditDraft::new(Operation::CancelCollection);
        let caller = self.ctx.authenticate(&request, &mut draft).await?;
        let result = async {
            let tenant = TenantId::parse(&request.get_ref().tenant)?;
            draft.tenant = Some(tenant.clone());
            let id = CollectionId::parse(&request.get_ref().collection_id)?;
            self.ctx.core.cancel_collection(&caller, &tenant, &id, &mut draft).await
        }
        .await;
        let collection = self.ctx.settled(draft, result).await?;
        Ok(Response::new(wire_collection(&collection, clock::now_ms())))
    }
}

/// The page's way into the vault: the core's collection steps, refused
/// like any call while a required audit sink is down or the chain cannot
/// be trusted, and at most [`PAGE_CALLS`] at once, so that anonymous
/// clients cannot crowd the database's writer out.
pub struct PageDesk {
    ctx: Context,
    calls: Arc<Semaphore>,
}

/// Calls from the collection page into the vault at once; one more is
/// refused at once as busy (the page asks to try again).
pub const PAGE_CALLS: usize = 16;

impl PageDesk {
    /// The desk over `ctx`.
    pub fn new(ctx: Context) -> Self {
        Self { ctx, calls: Arc::new(Semaphore::new(PAGE_CALLS)) }
    }

    /// A permit and a draft for the page's `operation` under a request id
    /// of its own, once the vault may serve it.
    fn admit(&self, operation: Operation) -> Result<(OwnedSemaphorePermit, AuditDraft), VaultError> {
        let busy = || VaultError::Unavailable("the vault is busy; try again in a moment".into());
        let permit = self.calls.clone().try_acquire_owned().map_err(|_| busy())?;
        let page = mnvault_core::id::Principal::parse(mnvault_core::vault::COLLECTION_PAGE_PRINCIPAL)
            .map_err(|_| VaultError::Internal)?;
        self.ctx.core.check_certificate(&page, None, operation)?;
        self.ctx.audit_sinks.check().map_err(|refusal| VaultError::Unavailable(refusal.message))?;
        let mut draft = AuditDraft::new(operation);
        draft.request_id = Some(mnvault_core::mint::draw_request_id());
        Ok((permit, draft))
    }

    /// Counts a link that did not work: an unknown one leaves no entry.
    fn count(&self, operation: Operation, unusable: Option<UnusableLink>) {
        if unusable == Some(UnusableLink::UnknownOrUsed) {
            self.ctx.metrics.refused(operation, tonic::Code::NotFound);
        }
    }
}

#[async_trait::async_trait]
impl crate::collect_page::CollectionDesk for PageDesk {
    async fn open(&self, link: &LinkSecret) -> Result<LinkOutcome, VaultError> {
        let (_permit, mut draft) = self.admit(Operation::OpenCollection)?;
        let opened = self.ctx.core.open_collection(link, &mut draft).await;
        self.ctx.audit_sinks.appended();
        self.count(Operation::OpenCollection, unusable_of(&opened));
        opened
    }

    async fn form(&self, link: &LinkSecret) -> Result<LinkOutcome, VaultError> {
        let (_permit, _) = self.admit(Operation::SubmitCollection)?;
        self.ctx.core.collection_form(link).await
    }

    async fn submit(&self, link: &LinkSecret, numbers: Vec<MyNumber>) -> Result<SubmitOutcome, VaultError> {
        let (_permit, mut draft) = self.admit(Operation::SubmitCollection)?;
        let submitted = self.ctx.core.submit_collection(link, &numbers, &mut draft).await;
        self.ctx.audit_sinks.appended();
        if let Ok(SubmitOutcome::Unusable(why)) = &submitted {
            self.count(Operation::SubmitCollection, Some(*why));
        }
        submitted
    }
}

fn unusable_of(outcome: &Result<LinkOutcome, VaultError>) -> Option<UnusableLink> {
    match outcome {
        Ok(LinkOutcome::Unusable(why)) => Some(*why),
        _ => None,
    }
}
