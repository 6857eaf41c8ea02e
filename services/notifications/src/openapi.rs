//! `GET /openapi.json`: the notifications API as an OpenAPI 3.1 document, written by hand.

use axum::Json;
use serde_json::{json, Value};

pub async fn document() -> Json<Value> {
    let problem = json!({"description": "problem+json", "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}});
    Json(json!({
        "openapi": "3.1.0",
        "info": {"title": "Stratus notifications", "version": env!("CARGO_PKG_VERSION"),
                 "description": "One notification per order outcome, from payment.completed and payment.failed."},
        "security": [{"bearer": []}],
        "paths": {
            "/api/notifications": {
                "get": {
                    "summary": "The caller's notifications, newest first",
                    "parameters": [
                        {"name": "order_id", "in": "query", "schema": {"type": "string", "maxLength": 64}},
                        {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}},
                        {"name": "offset", "in": "query", "schema": {"type": "integer", "minimum": 0, "default": 0}}
                    ],
                    "responses": {
                        "200": {"description": "notifications", "content": {"application/json": {"schema": {"type": "array", "items": {"$ref": "#/components/schemas/Notification"}}}}},
                        "400": problem, "401": problem
                    }
                }
            }
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
            "schemas": {
                "Notification": {"type": "object", "properties": {
                    "id": {"type": "string"}, "order_id": {"type": "string"},
                    "kind": {"type": "string", "enum": ["order.paid", "order.failed"]},
                    "message": {"type": "string"}, "created_at": {"type": "string", "format": "date-time"}}},
                "Problem": {"type": "object", "properties": {"type": {"type": "string"}, "title": {"type": "string"},
                    "status": {"type": "integer"}, "detail": {"type": "string"}}}
            }
        },
        "x-events": {"consumes": {"payment.completed": "group notifications", "payment.failed": "group notifications"}}
    }))
}
