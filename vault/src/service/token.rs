//! `TokenService`: numbers in, tokens out. Never a number out.

use std::collections::BTreeMap;

use futures::StreamExt;
use mnvault_core::audit::{AuditDraft, Operation, Outcome};
use mnvault_core::id::{CertificateSerial, Principal, TenantId, Token, TokenFormat};
use mnvault_core::number::MyNumber;
use mnvault_proto::v1 as pb;
use pb::token_service_server::TokenService;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument as _;
use zeroize::Zeroizing;

use super::wire::{timestamp, token_format, wire_format};
use super::{Context, Feed, FeedStopped, ResponseStream};
use crate::error::{code, VaultError};

/// Takes the number out of a request field, leaving it empty. Handlers call
/// this before anything else, so every path, refusals included, wipes it.
fn take_number(field: &mut String) -> Zeroizing<String> {
    Zeroizing::new(std::mem::take(field))
}

/// The token service.
pub struct TokenApi {
    ctx: Context,
}

impl TokenApi {
    /// The service over `ctx`.
    pub fn new(ctx: Context) -> Self {
        Self { ctx }
    }
}

/// Valid numbers of one tenant and format in a stream batch, with their positions.
type BatchGroup = (Vec<usize>, Vec<MyNumber>);

/// One record of a stream, parsed.
fn parse_record(request: &pb::TokenizeRequest, input: &str) -> Result<(TenantId, TokenFormat, MyNumber), VaultError> {
    Ok((TenantId::parse(&request.tenant)?, token_format(request.format)?, MyNumber::parse(input)?))
}

/// Answers one batch of a stream, in request order.
async fn answer_batch(
    ctx: &Context,
    caller_draft: &AuditDraft,
    requests: Vec<pb::TokenizeRequest>,
    first_index: u64,
) -> Vec<pb::TokenizeStreamResponse> {
    let caller = caller_draft.principal.clone().expect("an authenticated stream");
    let mut answers: Vec<Option<Result<Token, pb::RecordError>>> = (0..requests.len()).map(|_| None).collect();
    let mut groups: BTreeMap<(TenantId, TokenFormat), BatchGroup> = BTreeMap::new();
    // Refused records by tenant (only one the caller holds a grant on) and
    // outcome: (count, first reason). A caller naming many tenants it may not
    // use leaves one entry per outcome, not one per tenant.
    let mut refused: BTreeMap<(Option<TenantId>, Outcome), (u64, String)> = BTreeMap::new();
    for (position, mut request) in requests.into_iter().enumerate() {
        let input = take_number(&mut request.number);
        // Authorised before anything is written, like a single Tokenize.
        let parsed = parse_record(&request, &input).and_then(|(tenant, format, number)| {
            ctx.core.authorize_tokenize(&caller, &tenant)?;
            Ok((tenant, format, number))
        });
        match parsed {
            Ok((tenant, format, number)) => {
                let group = groups.entry((tenant, format)).or_default();
                group.0.push(position);
                group.1.push(number);
            }
            Err(error) => {
                let message = error.public_message();
                let tenant = ctx.tenant_on_file(Some(&caller), TenantId::parse(&request.tenant).ok());
                let entry = refused.entry((tenant, error.outcome())).or_insert_with(|| (0, message.clone()));
                entry.0 += 1;
                ctx.metrics.refused(Operation::TokenizeStream, code(&error));
                answers[position] = Some(Err(record_error(code(&error), message)));
            }
        }
    }
    for ((tenant, outcome), (count, first_reason)) in refused {
        let draft = AuditDraft {
            tenant,
            outcome,
            record_count: count,
            reason: format!("{count} record(s) refused; first: {first_reason}"),
            ..caller_draft.clone()
        };
        if let Err(error) = ctx.core.record(draft).await {
            tracing::error!(%error, "could not audit refused stream records");
        }
    }
    for ((tenant, format), (positions, numbers)) in groups {
        let draft = AuditDraft { tenant: Some(tenant.clone()), ..caller_draft.clone() };
        match ctx.core.tokenize(&caller, &tenant, format, &numbers, &draft).await {
            Ok(tokens) => {
                for (position, tokenized) in positions.into_iter().zip(tokens) {
                    ctx.metrics.record_tokenized(Operation::TokenizeStream, tokenized.created);
                    answers[position] = Some(Ok(tokenized.token));
                }
            }
            Err(error) => {
                let draft = AuditDraft { record_count: positions.len() as u64, ..draft };
                let status = ctx.refuse(draft, error).await;
                for position in positions {
                    answers[position] = Some(Err(record_error(status.code(), status.message().to_owned())));
                }
            }
        }
    }
    answers
        .into_iter()
        .enumerate()
        .map(|(position, answer)| {
            let result = match answer {
                Some(Ok(token)) => pb::tokenize_stream_response::Result::Token(token.to_string()),
                Some(Err(error)) => pb::tokenize_stream_response::Result::Error(error),
                None => pb::tokenize_stream_response::Result::Error(record_error(
                    tonic::Code::Internal,
                    VaultError::Internal.to_string(),
                )),
            };
            pb::TokenizeStreamResponse { index: first_index + position as u64, result: Some(result) }
        })
        .collect()
}

/// Answers a stream batch by batch: whatever has arrived, up to a batch, goes
/// into one transaction (no round trip to the database per record). Ends
/// the stream with a status when it carries more than
/// `limits.max_stream_records`, waits longer than `limits.idle_timeout_ms`
/// for a record, holds a message the vault cannot read, or when the vault
/// shuts down (`UNAVAILABLE`, after the batch in hand, naming the first
/// record not read).
async fn run_stream(
    ctx: Context,
    (caller, serial): (Principal, Option<CertificateSerial>),
    draft: AuditDraft,
    input: Streaming<pb::TokenizeRequest>,
    feed: Feed<pb::TokenizeStreamResponse>,
) {
    let limits = ctx.limits();
    let mut batches = input.ready_chunks(limits.stream_batch_records);
    let mut next_index = 0u64;
    let refusal: Option<Result<VaultError, Status>> = loop {
        let next = tokio::select! {
            // Once the vault is shutting down no batch is read: the one
            // answered last was committed and sent whole.
            biased;
            () = ctx.stopping.cancelled() => break Some(Ok(shutting_down(next_index))),
            next = tokio::time::timeout(limits.idle_timeout(), batches.next()) => next,
        };
        let batch = match next {
            Ok(Some(batch)) => batch,
            Ok(None) => break None,
            Err(_) => {
                break Some(Err(Status::deadline_exceeded(format!(
                    "no record arrived for {} ms (limits.idle_timeout_ms); the stream was closed",
                    limits.idle_timeout_ms
                ))))
            }
        };
        let mut requests = Vec::with_capacity(batch.len());
        let mut broken = None;
        for item in batch {
            match item {
                Ok(request) => requests.push(request),
                Err(status) => {
                    broken = Some(status);
                    break;
                }
            }
        }
        // A required audit sink that fails or lags: this batch and the rest are not read.
        if let Err(refusal) = ctx.audit_sinks.check() {
            tracing::debug!(reason = %refusal.detail, "tokenize stream cut: a required audit sink is down");
            for mut unread in requests {
                drop(take_number(&mut unread.number));
            }
            break Some(Ok(VaultError::Unavailable(format!(
                "{}; records before index {next_index} were answered, records from index {next_index} on were not \
                 read: send them again once it is back",
                refusal.message
            ))));
        }
        // A certificate revoked while the stream runs: this batch and the rest are not read.
        if let Err(refused) = ctx.recheck(&caller, serial.as_ref(), Operation::TokenizeStream) {
            for mut unread in requests {
                drop(take_number(&mut unread.number));
            }
            break Some(Ok(refused));
        }
        // Records past the stream's limit are not answered, and their numbers are wiped.
        let room = usize::try_from(limits.max_stream_records.saturating_sub(next_index)).unwrap_or(usize::MAX);
        let over = requests.len() > room;
        for mut extra in requests.drain(room.min(requests.len())..) {
            drop(take_number(&mut extra.number));
        }
        let count = requests.len() as u64;
        if count > 0 {
            for answer in answer_batch(&ctx, &draft, requests, next_index).await {
                match feed.send(Ok(answer)).await {
                    Ok(()) => {}
                    Err(stopped) => {
                        if stopped == FeedStopped::Stalled {
                            tracing::warn!(
                                answered = next_index,
                                "tokenize stream dropped: the client stopped reading its answers"
                            );
                        }
                        return;
                    }
                }
            }
        }
        next_index += count;
        if over {
            break Some(Ok(VaultError::InvalidArgument(format!(
                "a TokenizeStream carries at most {} records (limits.max_stream_records); records from index \
                 {next_index} on were not read: send them on another stream",
                limits.max_stream_records
            ))));
        }
        if let Some(status) = broken {
            break Some(Err(status));
        }
    };
    let status = match refusal {
        // Batches audit themselves; a stream that sent nothing still leaves its entry.
        None => {
            if next_index == 0 {
                if let Err(error) = ctx.core.record(draft).await {
                    tracing::error!(%error, "could not audit an empty tokenize stream");
                }
            }
            None
        }
        Some(Ok(error)) => Some(ctx.refuse(draft, error).await),
        Some(Err(status)) if status.code() == tonic::Code::DeadlineExceeded => {
            ctx.record_refusal(draft, Outcome::Invalid, &status).await;
            Some(status)
        }
        Some(Err(status)) => {
            tracing::info!(code = ?status.code(), "tokenize stream ended by a transport error");
            Some(ctx.refused_by_transport(draft, &status).await)
        }
    };
    if let Some(status) = status {
        if feed.send(Err(status)).await.is_err() {
            return;
        }
    }
    feed.finish();
}

/// How a stream ends when the vault shuts down: every record before
/// `next_index` was answered (its batch committed), none from it on was read.
fn shutting_down(next_index: u64) -> VaultError {
    VaultError::Unavailable(format!(
        "the vault is shutting down: records before index {next_index} were answered, records from index \
         {next_index} on were not read; send them again (to another replica, or once the vault is back)"
    ))
}

fn record_error(code: tonic::Code, message: String) -> pb::RecordError {
    pb::RecordError { code: code as i32, message }
}

#[tonic::async_trait]
impl TokenService for TokenApi {
    async fn tokenize(&self, request: Request<pb::TokenizeRequest>) -> Result<Response<pb::TokenizeResponse>, Status> {
        let mut request = request;
        let input = take_number(&mut request.get_mut().number);
        let mut draft = AuditDraft::new(Operation::Tokenize);
        let caller = self.ctx.authenticate(&request, &mut draft).await?;
        let request = request.into_inner();
        let checked = async {
            let tenant = TenantId::parse(&request.tenant)?;
            draft.tenant = Some(tenant.clone());
            let format = token_format(request.format)?;
            let number = MyNumber::parse(&input)?;
            self.ctx.core.authorize_tokenize(&caller, &tenant)?;
            // Full house: refused at once, not queued behind other callers.
            let permit = self.ctx.tokenize_tasks.clone().try_acquire_owned().map_err(|_| {
                VaultError::Unavailable(
                    "the vault has as many tokenize calls in flight as it takes; retry shortly".into(),
                )
            })?;
            Ok((tenant, format, number, permit))
        }
        .await;
        let (tenant, format, number, permit) = self.ctx.settled(draft.clone(), checked).await?;
        // The write runs in a task of its own, which a reset or timed-out call
        // cannot drop halfway through a group commit it leads, and settles
        // there, so a failure is audited even when the caller is gone.
        let (ctx, task_draft) = (self.ctx.clone(), draft.clone());
        let write = async move {
            let _permit = permit;
            let tokenized = ctx.core.tokenize(&caller, &tenant, format, std::slice::from_ref(&number), &task_draft);
            let result = tokenized.await.and_then(|tokenized| tokenized.into_iter().next().ok_or(VaultError::Internal));
            ctx.settled(task_draft, result).await
        };
        let tokenized = match tokio::spawn(write.instrument(tracing::Span::current())).await {
            Ok(answer) => answer?,
            Err(error) => {
                tracing::error!(%error, "a tokenize task ended without an answer");
                return Err(self.ctx.refuse(draft, VaultError::Internal).await);
            }
        };
        self.ctx.metrics.record_tokenized(Operation::Tokenize, tokenized.created);
        Ok(Response::new(pb::TokenizeResponse { token: tokenized.token.to_string(), created: tokenized.created }))
    }

    type TokenizeStreamStream = ResponseStream<pb::TokenizeStreamResponse>;

    async fn tokenize_stream(
        &self,
        request: Request<Streaming<pb::TokenizeRequest>>,
    ) -> Result<Response<Self::TokenizeStreamStream>, Status> {
        let mut draft = AuditDraft::new(Operation::TokenizeStream);
        let certified = self.ctx.authenticate_certified(&request, &mut draft).await?;
        let limits = self.ctx.limits();
        let (feed, responses) = Feed::new(limits.stream_batch_records, limits.stream_send_timeout());
        let stream = run_stream(self.ctx.clone(), certified, draft, request.into_inner(), feed);
        tokio::spawn(stream.instrument(tracing::Span::current()));
        Ok(Response::new(responses))
    }

    async fn describe_token(
        &self,
        request: Request<pb::DescribeTokenRequest>,
    ) -> Result<Response<pb::DescribeTokenResponse>, Status> {
        let mut draft = AuditDraft::new(Operation::DescribeToken);
        let caller = self.ctx.authenticate(&request, &mut draft).await?;
        let request = request.into_inner();
        let result = async {
            let tenant = TenantId::parse(&request.tenant)?;
            draft.tenant = Some(tenant.clone());
            let token = Token::parse(&request.token)?;
            draft.record_count = 1;
            let info = self.ctx.core.describe_token(&caller, &tenant, &token).await?;
            // Recorded only once it resolved: a mistyped number parses as a legacy token.
            draft.tokens = vec![info.token.clone()];
            Ok(pb::DescribeTokenResponse {
                tenant: tenant.to_string(),
                token: info.token.to_string(),
                format: wire_format(info.format).into(),
                key_version: info.key_version,
                created_at: Some(timestamp(info.created_at)),
            })
        }
        .await;
        Ok(Response::new(self.ctx.audited(draft, result).await?))
    }
}
