//! `TokenService`: numbers in, tokens out. Never a number out.

use std::collections::BTreeMap;
use std::pin::Pin;

use futures::{Stream, StreamExt};
use mnvault_client::number::{check_digit, MyNumber};
use mnvault_keys::TenantKeys;
use mnvault_proto::v1 as pb;
use pb::token_service_server::TokenService;
use rand::{Rng, RngCore};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use zeroize::Zeroizing;

use super::{draw_without_number, Context};
use crate::audit::{AuditDraft, Operation, Outcome};
use crate::authz::Role;
use crate::clock;
use crate::error::VaultError;
use crate::store::{BatchItem, NewRecord, StoreError, StoredFormat};

/// Prefix of opaque tokens.
pub const OPAQUE_TOKEN_PREFIX: &str = "mnt_";

/// Most records a stream batch holds: one transaction and one audit entry each.
const STREAM_BATCH: usize = 2_000;

/// A random token collides with an existing one about never; retrying a few
/// times turns "about never" into "never".
const TOKEN_DRAWS: usize = 4;

/// Draws a fresh random token; unrelated to the number by construction.
pub fn draw_token(format: StoredFormat) -> String {
    draw_without_number(|| draw_token_once(format))
}

fn draw_token_once(format: StoredFormat) -> String {
    let mut rng = rand::rngs::OsRng;
    match format {
        StoredFormat::Opaque => {
            let mut bytes = Zeroizing::new([0u8; 16]);
            rng.fill_bytes(&mut bytes[..]);
            let mut token = String::with_capacity(30);
            token.push_str(OPAQUE_TOKEN_PREFIX);
            token.push_str(&data_encoding::BASE32_NOPAD.encode(&bytes[..]).to_ascii_lowercase());
            token
        }
        StoredFormat::LegacyDigits => {
            let mut digits = [0u8; 11];
            digits.iter_mut().for_each(|d| *d = b'0' + rng.gen_range(0..10));
            // Any digit but the real check digit, so the token never passes for a number.
            let wrong = (check_digit(&digits) + rng.gen_range(1..10)) % 10;
            let mut token = String::from_utf8(digits.to_vec()).expect("ASCII digits");
            token.push(char::from(b'0' + wrong));
            token
        }
    }
}

fn stored_format(format: i32) -> Result<StoredFormat, VaultError> {
    match pb::TokenFormat::try_from(format) {
        Ok(pb::TokenFormat::Unspecified | pb::TokenFormat::Opaque) => Ok(StoredFormat::Opaque),
        Ok(pb::TokenFormat::LegacyDigits) => Ok(StoredFormat::LegacyDigits),
        Err(_) => Err(VaultError::InvalidArgument(format!("token format {format} is not known"))),
    }
}

fn wire_format(format: StoredFormat) -> pb::TokenFormat {
    match format {
        StoredFormat::Opaque => pb::TokenFormat::Opaque,
        StoredFormat::LegacyDigits => pb::TokenFormat::LegacyDigits,
    }
}

/// Takes the number out of a request field, leaving it empty. Handlers call
/// this before anything else, so every path, refusals included, wipes it.
fn take_number(field: &mut String) -> Zeroizing<String> {
    Zeroizing::new(std::mem::take(field))
}

fn parse_number(input: &str) -> Result<MyNumber, VaultError> {
    MyNumber::parse(input).map_err(|error| VaultError::InvalidArgument(error.to_string()))
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

/// A number's token, and whether this call created it.
struct Tokenized {
    token: String,
    created: bool,
}

/// Tokenizes valid numbers of one tenant and format in one transaction.
async fn tokenize_batch(
    ctx: &Context,
    tenant: &str,
    format: StoredFormat,
    numbers: &[MyNumber],
    audit: AuditDraft,
) -> Result<Vec<Tokenized>, VaultError> {
    let keys = ctx.keyring.tenant_keys(tenant).await?;
    let indexes: Vec<_> = numbers.iter().map(|n| keys.blind_index(n.expose_bytes())).collect();
    let existing = ctx.store.find_tokens(tenant, format, &indexes).await?;
    for _ in 0..TOKEN_DRAWS {
        let items = batch_items(&keys, format, numbers, &indexes, &existing)?;
        let drawn: Vec<Option<String>> = items
            .iter()
            .map(|item| match item {
                BatchItem::New(record) => Some(record.token.clone()),
                BatchItem::Existing(_) => None,
            })
            .collect();
        match ctx.store.tokenize(tenant, format, items, audit.clone()).await {
            Err(StoreError::TokenCollision) => continue,
            Err(error) => return Err(error.into()),
            Ok(tokens) => {
                // A drawn token that came back is ours; another one is a concurrent writer's.
                return Ok(tokens
                    .into_iter()
                    .zip(drawn)
                    .map(|(token, drawn)| Tokenized { created: drawn.as_deref() == Some(token.as_str()), token })
                    .collect());
            }
        }
    }
    tracing::error!(%tenant, "token draws kept colliding");
    Err(VaultError::Internal)
}

fn batch_items(
    keys: &TenantKeys,
    format: StoredFormat,
    numbers: &[MyNumber],
    indexes: &[mnvault_keys::BlindIndex],
    existing: &[Option<String>],
) -> Result<Vec<BatchItem>, VaultError> {
    numbers
        .iter()
        .zip(indexes)
        .zip(existing)
        .map(|((number, index), existing)| match existing {
            Some(token) => Ok(BatchItem::Existing(token.clone())),
            None => {
                let token = draw_token(format);
                let sealed = keys.seal(&token, number.expose_bytes()).map_err(|error| {
                    tracing::error!(%error, "sealing failed");
                    VaultError::Internal
                })?;
                Ok(BatchItem::New(NewRecord {
                    blind_index: *index,
                    token,
                    key_version: keys.primary_version(),
                    sealed,
                }))
            }
        })
        .collect()
}

/// Valid numbers of one tenant and format in a stream batch, with their positions.
type BatchGroup = (StoredFormat, Vec<usize>, Vec<MyNumber>);

/// Answers one batch of a stream, in request order.
async fn answer_batch(
    ctx: &Context,
    caller: &str,
    requests: Vec<pb::TokenizeRequest>,
    first_index: u64,
) -> Vec<pb::TokenizeStreamResponse> {
    let mut answers: Vec<Option<Result<String, pb::RecordError>>> = (0..requests.len()).map(|_| None).collect();
    // Valid numbers grouped by tenant and format, keeping their positions.
    let mut groups: BTreeMap<(String, &'static str), BatchGroup> = BTreeMap::new();
    // Refused records by tenant and outcome: (count, first reason).
    let mut refused: BTreeMap<(String, Outcome), (u64, String)> = BTreeMap::new();
    for (position, mut request) in requests.into_iter().enumerate() {
        let input = take_number(&mut request.number);
        let parsed = ctx
            .policy
            .require(caller, &[Role::Tokenizer], Some(&request.tenant))
            .and_then(|()| stored_format(request.format))
            .and_then(|format| Ok((format, parse_number(&input)?)));
        match parsed {
            Ok((format, number)) => {
                let group =
                    groups.entry((request.tenant, format.id())).or_insert_with(|| (format, Vec::new(), Vec::new()));
                group.1.push(position);
                group.2.push(number);
            }
            Err(error) => {
                let message = error.public_message();
                let entry = refused.entry((request.tenant, error.outcome())).or_insert_with(|| (0, message.clone()));
                entry.0 += 1;
                answers[position] = Some(Err(record_error(error.code(), message)));
            }
        }
    }
    for ((tenant, outcome), (count, first_reason)) in refused {
        let mut draft = AuditDraft::new(caller, Operation::TokenizeStream, &tenant);
        draft.outcome = outcome;
        draft.record_count = count;
        draft.reason = format!("{count} record(s) refused; first: {first_reason}");
        if let Err(error) = ctx.store.append_audit(draft).await {
            tracing::error!(%error, "could not audit refused stream records");
        }
    }
    for ((tenant, _), (format, positions, numbers)) in groups {
        let draft = AuditDraft::new(caller, Operation::TokenizeStream, &tenant);
        match tokenize_batch(ctx, &tenant, format, &numbers, draft.clone()).await {
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
                Some(Ok(token)) => pb::tokenize_stream_response::Result::Token(token),
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
        let draft = AuditDraft::new("", Operation::Tokenize, &request.get_ref().tenant);
        let (caller, draft) = self.ctx.authenticate(&request, draft).await?;
        let request = request.into_inner();
        let result = async {
            self.ctx.policy.require(&caller, &[Role::Tokenizer], Some(&request.tenant))?;
            let format = stored_format(request.format)?;
            let number = parse_number(&input)?;
            let tokens =
                tokenize_batch(&self.ctx, &request.tenant, format, std::slice::from_ref(&number), draft.clone())
                    .await?;
            tokens.into_iter().next().ok_or(VaultError::Internal)
        }
        .await;
        let tokenized = self.ctx.settled(draft, result).await?;
        Ok(Response::new(pb::TokenizeResponse { token: tokenized.token, created: tokenized.created }))
    }

    type TokenizeStreamStream = ResponseStream<pb::TokenizeStreamResponse>;

    async fn tokenize_stream(
        &self,
        request: Request<Streaming<pb::TokenizeRequest>>,
    ) -> Result<Response<Self::TokenizeStreamStream>, Status> {
        let draft = AuditDraft::new("", Operation::TokenizeStream, "");
        let (caller, draft) = self.ctx.authenticate(&request, draft).await?;
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
                for answer in answer_batch(&ctx, &caller, requests, next_index).await {
                    if sender.send(Ok(answer)).await.is_err() {
                        return; // the client went away
                    }
                }
                next_index += count;
                if let Some(status) = broken {
                    tracing::info!(%status, "tokenize stream ended by a transport error");
                    break;
                }
            }
            // Batches audit themselves; a stream that sent nothing still leaves its entry.
            if next_index == 0 {
                if let Err(error) = ctx.store.append_audit(draft).await {
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
        let mut draft = AuditDraft::new("", Operation::DescribeToken, &request.get_ref().tenant);
        draft.tokens = vec![request.get_ref().token.clone()];
        let (caller, draft) = self.ctx.authenticate(&request, draft).await?;
        let draft = AuditDraft { record_count: 1, ..draft };
        let request = request.into_inner();
        let result = async {
            let roles = [Role::Tokenizer, Role::Requester, Role::Approver, Role::Filer, Role::Auditor];
            self.ctx.policy.require(&caller, &roles, Some(&request.tenant))?;
            self.ctx.keyring.tenant_keys(&request.tenant).await?;
            let info = self.ctx.store.record_info(&request.tenant, &request.token).await?.ok_or_else(|| {
                VaultError::NotFound(format!("token {} does not exist in tenant {:?}", request.token, request.tenant))
            })?;
            Ok(pb::DescribeTokenResponse {
                tenant: request.tenant.clone(),
                token: info.token,
                format: wire_format(info.format).into(),
                key_version: info.key_version,
                created_at: Some(clock::timestamp(info.created_at)),
            })
        }
        .await;
        Ok(Response::new(self.ctx.audited(draft, result).await?))
    }
}
