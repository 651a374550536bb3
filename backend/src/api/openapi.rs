//! `GET /api/openapi.json`: the HTTP API, generated from the handlers'
//! annotations and then completed here, in one place, so that it says exactly what
//! the server does (schemathesis checks it against the running server in
//! `make test`):
//!
//! - each block gets its own start operations (`/api/ai-block/quiz`, …), with the
//!   block's input schema from `ai::blocks::schema` — one `{block_type}` template
//!   could not say which input goes with which block;
//! - every error answer is `application/problem+json`, and every status a route
//!   can answer is listed: 401 where a credential is needed, 403 and 429 where a
//!   generation starts, 400/413/415/422 where a JSON body is read, 503 where the
//!   store or streaming may be unavailable.
//!
//! Stream events themselves are described by the AsyncAPI contract in `specs/`.

use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};
use utoipa::OpenApi;

use super::AppState;
use crate::ai::blocks::schema::{input_schema, query_parameters};
use crate::ai::blocks::BlockType;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Live AI Blocks",
        description = "Streams AI block answers over SSE and WebSocket. Event payloads: specs/050-live-ai-interaction/contracts/stream-schema.yaml (AsyncAPI 3). With AUTH_MODE jwt or api_key, send `Authorization: Bearer <token>`. Any request may also be answered `503` `at_capacity` with `Connection: close` when the server holds MAX_CONNECTIONS open connections; a request refused before its body was read is answered with `Connection: close`."
    ),
    paths(
        super::streaming::stream_block,
        super::streaming::create_stream,
        super::streaming::stream_events,
        super::streaming::cancel_stream,
        super::ws::upgrade,
        super::blocks::whole_response,
        super::usage::usage,
        super::config::ai_config,
        super::ops::healthz,
        super::ops::readyz,
        super::ops::metrics,
    ),
    components(schemas(super::error::Problem))
)]
pub struct ApiDoc;

pub fn router() -> Router<AppState> {
    let document = document();
    Router::new().route("/api/openapi.json", get(move || std::future::ready(Json(document.clone()))))
}

/// `^[A-Za-z0-9_-]{1,64}$`: the shape of every stream id.
const STREAM_ID_PATTERN: &str = "^[A-Za-z0-9_-]{1,64}$";

/// The finished document.
pub fn document() -> Value {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).expect("the OpenAPI document serialises");
    per_block_operations(&mut doc);
    doc["components"]["securitySchemes"] = json!({
        "bearer": {"type": "http", "scheme": "bearer", "description": "A learner JWT from the host app (AUTH_MODE=jwt) or an API key (AUTH_MODE=api_key). Not needed with AUTH_MODE=none."},
        "readToken": {"type": "apiKey", "in": "query", "name": "read_token", "description": "The read_token of POST /api/streams: reads that one stream for a few minutes."},
    });
    let paths = doc["paths"].as_object_mut().expect("paths");
    for (path, item) in paths.iter_mut() {
        for (method, operation) in item.as_object_mut().expect("a path item").iter_mut() {
            complete(path, method, operation);
        }
    }
    doc
}

/// Replaces the `{block_type}` templates of the two start-by-block routes with one
/// operation per block, carrying that block's input schema.
fn per_block_operations(doc: &mut Value) {
    let paths = doc["paths"].as_object_mut().expect("paths");
    let whole = paths.remove("/api/ai-block/{block_type}").expect("the whole-response route is documented");
    let streamed = paths.remove("/api/stream/ai-block/{block_type}").expect("the SSE start route is documented");
    for block in BlockType::ALL {
        let name = block.as_str();
        let mut post = whole["post"].clone();
        post["operationId"] = json!(format!("whole_response_{}", name.replace('-', "_")));
        post["summary"] = json!(format!("The whole `{name}` answer at once"));
        strip_block_type(&mut post);
        post["requestBody"] = json!({"required": true, "content": {"application/json": {"schema": input_schema(block)}}});
        paths.insert(format!("/api/ai-block/{name}"), json!({"post": post}));

        let mut get = streamed["get"].clone();
        get["operationId"] = json!(format!("stream_block_{}", name.replace('-', "_")));
        get["summary"] = json!(format!("Start `{name}` and stream it (SSE)"));
        strip_block_type(&mut get);
        let parameters = get["parameters"].as_array_mut().expect("the SSE start route has parameters");
        for (field, required, schema) in query_parameters(block) {
            parameters.push(json!({"name": field, "in": "query", "required": required, "schema": schema}));
        }
        paths.insert(format!("/api/stream/ai-block/{name}"), json!({"get": get}));
    }
    let starts: Vec<Value> = BlockType::ALL
        .iter()
        .map(|block| {
            json!({
                "type": "object",
                "additionalProperties": false,
                "required": ["block_type", "input"],
                "properties": {"block_type": {"const": block.as_str()}, "input": input_schema(*block)},
            })
        })
        .collect();
    paths["/api/streams"]["post"]["requestBody"]["content"]["application/json"]["schema"] = json!({"oneOf": starts});
}

fn strip_block_type(operation: &mut Value) {
    if let Some(parameters) = operation.get_mut("parameters").and_then(Value::as_array_mut) {
        parameters.retain(|p| p["name"] != "block_type");
    }
}

/// Adds what every operation of its kind may answer, and the problem media type.
fn complete(path: &str, method: &str, operation: &mut Value) {
    let public = !path.starts_with("/api/") || path == "/api/openapi.json" || path == "/api/ai/config";
    let websocket = path == "/api/stream/ws";
    let starts = websocket
        || path.starts_with("/api/ai-block/")
        || path.starts_with("/api/stream/ai-block/")
        || (path == "/api/streams" && method == "post");
    let mut extra: Vec<(&str, &str)> = Vec::new();
    if !public {
        extra.push(("401", "Missing or refused credential (`WWW-Authenticate: Bearer`)"));
        extra.push(("503", "Streaming is disabled, or the server's store is unavailable; retry later"));
        operation["security"] = match path {
            // Browsers cannot set headers on a WebSocket: the first message may authenticate.
            "/api/stream/ws" => json!([{}, {"bearer": []}]),
            "/api/streams/{stream_id}/events" => json!([{"bearer": []}, {"readToken": []}]),
            _ => json!([{"bearer": []}]),
        };
    }
    if starts {
        extra.push(("403", "The start comes from another site (`Origin` / `Sec-Fetch-Site` outside CORS_ALLOWED_ORIGINS)"));
        extra.push(("429", "Over a limit: `rate_limited` (concurrent streams, starts per minute) or `budget_exhausted` (tokens per day)"));
    }
    if operation.get("requestBody").is_some() {
        extra.push(("400", "The body is not JSON"));
        extra.push(("413", "The body or a field is too large; `field` names it"));
        extra.push(("415", "The body is not `Content-Type: application/json`"));
        extra.push(("422", "A field is missing or invalid; `field` names it"));
    }
    if path.contains('{') {
        extra.push(("400", "A path or header parameter is malformed; `field` names it"));
    }
    let responses = operation["responses"].as_object_mut().expect("responses");
    for (status, description) in extra {
        responses.entry(status).or_insert_with(|| json!({"description": description}));
    }
    if path.starts_with("/api/stream/ai-block/") {
        // Answered by the HTTP layer itself, before any handler: no body.
        responses.insert(
            "414".into(),
            json!({"description": "The URL is too long for the HTTP layer (about 64 KiB): send long input with POST /api/streams"}),
        );
    }
    for (status, response) in responses.iter_mut() {
        if status.as_str() >= "400" && status != "414" {
            response["content"] = json!({"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}});
        }
        if status == "429" {
            response["headers"] = rate_limit_headers();
        }
    }
    tighten_parameters(operation);
}

fn rate_limit_headers() -> Value {
    let integer = |description: &str| json!({"description": description, "schema": {"type": "integer", "minimum": 0}});
    json!({
        "Retry-After": integer("Seconds to wait before starting again"),
        "RateLimit-Limit": integer("The limit that refused the start"),
        "RateLimit-Remaining": integer("What is left of it"),
        "RateLimit-Reset": integer("Seconds until it allows again"),
    })
}

/// Parameter schemas as strict as the server's parsing.
fn tighten_parameters(operation: &mut Value) {
    let Some(parameters) = operation.get_mut("parameters").and_then(Value::as_array_mut) else { return };
    for parameter in parameters {
        let schema = match parameter["name"].as_str().unwrap_or_default() {
            "stream_id" => json!({"type": "string", "pattern": STREAM_ID_PATTERN}),
            "Last-Event-ID" => json!({"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}:[0-9]{1,19}$"}),
            "Idempotency-Key" => json!({"type": "string", "minLength": 1, "maxLength": 128, "pattern": "^[ -~]*[!-~][ -~]*$"}),
            "after" => json!({"type": "integer", "minimum": 0, "maximum": u64::MAX}),
            _ => continue,
        };
        parameter["schema"] = schema;
    }
}

#[cfg(test)]
mod tests {
    use serde_json::Map;

    use super::*;

    #[test]
    fn every_error_answer_is_a_problem_and_starts_list_their_refusals() {
        let doc = document();
        let paths: &Map<String, Value> = doc["paths"].as_object().unwrap();
        assert!(paths.contains_key("/api/ai-block/quiz") && !paths.contains_key("/api/ai-block/{block_type}"));
        for (path, item) in paths {
            for (method, operation) in item.as_object().unwrap() {
                for (status, response) in operation["responses"].as_object().unwrap() {
                    if status.as_str() >= "400" && status != "414" {
                        assert!(response["content"].get("application/problem+json").is_some(), "{method} {path} {status}");
                    }
                }
            }
        }
        for start in ["/api/streams", "/api/stream/ai-block/quiz", "/api/ai-block/diagram"] {
            let operation = paths[start].as_object().unwrap().values().next().unwrap();
            for status in ["401", "403", "429"] {
                assert!(operation["responses"].get(status).is_some(), "{start} {status}");
            }
        }
    }
}
