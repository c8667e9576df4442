//! `TokenService`: numbers in, tokens out. Never a number out.

use std::collections::BTreeMap;
use std::pin::Pin;

use futures::{Stream, StreamExt};
use mnvault_core::audit::{AuditDraft, Operation, Outcome};
use mnvault_core::id::{TenantId, Token, TokenFormat};
use mnvault_core::number::MyNumber;
use mnvault_proto::v1 as pb;
use pb::token_service_server::TokenService;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use zeroize::Zeroizing;

use super::wire::{timestamp, token_format, wire_format};
use super::Context;
use crate::error::{code, VaultError};

/// Most records a stream batch holds: one transaction and one audit entry each.
const STREAM_BATCH: usize = 2_000;

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
    // Refused records by tenant (when it parsed) and outcome: (count, first reason).
    let mut refused: BTreeMap<(Option<TenantId>, Outcome), (u64, String)> = BTreeMap::new();
    for (position, mut request) in requests.into_iter().enumerate() {
        let input = take_number(&mut request.number);
        match parse_record(&request, &input) {
            Ok((tenant, format, number)) => {
                let group = groups.entry((tenant, format)).or_default();
                group.0.push(position);
                group.1.push(number);
            }
            Err(error) => {
                let message = error.public_message();
                let tenant = TenantId::parse(&request.tenant).ok();
                let entry = refused.entry((tenant, error.outcome())).or_insert_with(|| (0, message.clone()));
                entry.0 += 1;
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

fn record_error(code: tonic::Code, message: String) -> pb::RecordError {
    pb::RecordError { code: code as i32, message }
}

type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl TokenService for TokenApi {
    async fn tokenize(&self, request: Request<pb::TokenizeRequest>) -> Result<Response<pb::TokenizeResponse>, Status> {
        let mut request = request;
        let input = take_number(&mut request.get_mut().number);
        let mut draft = AuditDraft::new(Operation::Tokenize);
        let caller = self.ctx.authenticate(&request, &mut draft).await?;
        let request = request.into_inner();
        let result = async {
            let tenant = TenantId::parse(&request.tenant)?;
            draft.tenant = Some(tenant.clone());
            let format = token_format(request.format)?;
            let number = MyNumber::parse(&input)?;
            let tokenized = self.ctx.core.tokenize(&caller, &tenant, format, std::slice::from_ref(&number), &draft);
            tokenized.await?.into_iter().next().ok_or(VaultError::Internal)
        }
        .await;
        let tokenized = self.ctx.settled(draft, result).await?;
        Ok(Response::new(pb::TokenizeResponse { token: tokenized.token.to_string(), created: tokenized.created }))
    }

    type TokenizeStreamStream = ResponseStream<pb::TokenizeStreamResponse>;

    async fn tokenize_stream(
        &self,
        request: Request<Streaming<pb::TokenizeRequest>>,
    ) -> Result<Response<Self::TokenizeStreamStream>, Status> {
        let mut draft = AuditDraft::new(Operation::TokenizeStream);
        self.ctx.authenticate(&request, &mut draft).await?;
        let ctx = self.ctx.clone();
        let (sender, receiver) = mpsc::channel(STREAM_BATCH);
        tokio::spawn(async move {
            // Whatever has arrived, up to a batch, goes into one transaction:
            // no round trip to the database per record.
            let mut batches = request.into_inner().ready_chunks(STREAM_BATCH);
            let mut next_index = 0u64;
            while let Some(batch) = batches.next().await {
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
                let count = requests.len() as u64;
                for answer in answer_batch(&ctx, &draft, requests, next_index).await {
                    if sender.send(Ok(answer)).await.is_err() {
                        return; // the client went away
                    }
                }
                next_index += count;
                if let Some(status) = broken {
                    tracing::info!(code = ?status.code(), "tokenize stream ended by a transport error");
                    break;
                }
            }
            // Batches audit themselves; a stream that sent nothing still leaves its entry.
            if next_index == 0 {
                if let Err(error) = ctx.core.record(draft).await {
                    tracing::error!(%error, "could not audit an empty tokenize stream");
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
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
            draft.tokens = vec![token.clone()];
            draft.record_count = 1;
            let info = self.ctx.core.describe_token(&caller, &tenant, &token).await?;
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
