//! `POST /api/ai-block/{block_type}`: whole-response mode. Works whether or not
//! streaming is enabled; runs the same engine stream and returns it complete.

use axum::extract::{Path, State};
use axum::routing::post;
use axum::{Json, Router};
use serde::Serialize;
use serde_json::{Map, Value};

use super::error::{ApiError, JsonBody};
use super::origin::SameSiteStart;
use super::AppState;
use crate::ai::blocks::{BlockInput, BlockType};
use crate::ai::streaming::events::{FinishReason, Usage};
use crate::auth::Principal;

pub fn router() -> Router<AppState> {
    Router::new().route("/api/ai-block/{block_type}", post(whole_response))
}

pub fn parse_block_type(raw: &str) -> Result<BlockType, ApiError> {
    BlockType::parse(raw).ok_or_else(|| ApiError::UnknownBlock(raw.chars().take(64).collect()))
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct BlockResponse {
    block_type: BlockType,
    provider: String,
    model: String,
    /// The whole output text: what the `chunk` tokens of a stream concatenate to.
    text: String,
    /// The structured parts (quiz questions), in order.
    parts: Vec<Value>,
    /// `{markdown}`, `{questions}` or `{kind, source}`.
    result: Value,
    #[schema(value_type = Object)]
    usage: Usage,
    #[schema(value_type = String)]
    finish_reason: FinishReason,
}

#[utoipa::path(
    post, path = "/api/ai-block/{block_type}",
    params(("block_type" = String, Path, description = "ask-question, explain-eli10, quiz or diagram")),
    request_body(content = Object, description = "The block input, e.g. {\"topic\": \"volcanoes\", \"count\": 3}"),
    responses(
        (status = 200, body = BlockResponse),
        (status = 404, body = super::error::Problem, description = "Unknown block type"),
        (status = 413, body = super::error::Problem, description = "A field or the body is too large"),
        (status = 422, body = super::error::Problem, description = "A field is missing or invalid (`field` names it), or moderation flagged the learner's input (`input_flagged`, with `categories`)"),
        (status = 502, body = super::error::Problem, description = "The provider failed, its output was invalid, or moderation flagged it (`output_flagged`, with `categories`)"),
        (status = 503, body = super::error::Problem, description = "The provider or the moderator (`moderation_unavailable`) cannot be reached, or the server's store is unavailable; retry later"),
    )
)]
pub async fn whole_response(
    _: SameSiteStart,
    State(state): State<AppState>,
    principal: Principal,
    Path(block_type): Path<String>,
    JsonBody(fields): JsonBody<Map<String, Value>>,
) -> Result<Json<BlockResponse>, ApiError> {
    let block_type = parse_block_type(&block_type)?;
    let input = BlockInput::parse(block_type, &fields)?;
    let reservation = state.limits.admit(&principal, input.prompt().max_tokens.into()).await?;
    let whole = state.manager.respond(input, principal.id(), reservation).await?.map_err(ApiError::Generation)?;
    Ok(Json(BlockResponse {
        block_type,
        provider: whole.provider,
        model: whole.model,
        text: whole.text,
        parts: whole.parts,
        result: whole.result,
        usage: whole.usage,
        finish_reason: whole.finish_reason,
    }))
}
