//! `GET /openapi.json`: the payments API as an OpenAPI 3.1 document, written by hand.

use axum::Json;
use serde_json::{json, Value};

pub async fn document() -> Json<Value> {
    let problem = json!({"description": "problem+json", "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}});
    Json(json!({
        "openapi": "3.1.0",
        "info": {"title": "Stratus payments", "version": env!("CARGO_PKG_VERSION"),
                 "description": "Charges each order.placed exactly once with a simulated card: an order with a line of quantity 13 is declined, every other is charged."},
        "security": [{"bearer": []}],
        "paths": {
            "/api/payments": {
                "get": {
                    "summary": "Payments of an order (its owner or an admin), or the caller's newest",
                    "parameters": [
                        {"name": "order_id", "in": "query", "schema": {"type": "string", "maxLength": 64}},
                        {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}},
                        {"name": "offset", "in": "query", "schema": {"type": "integer", "minimum": 0, "default": 0}}
                    ],
                    "responses": {
                        "200": {"description": "payments (at most one per order)", "content": {"application/json": {"schema": {"type": "array", "items": {"$ref": "#/components/schemas/Payment"}}}}},
                        "400": problem, "401": problem
                    }
                }
            }
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
            "schemas": {
                "Payment": {"type": "object", "properties": {
                    "id": {"type": "string"}, "order_id": {"type": "string"}, "user_id": {"type": "string"},
                    "amount_cents": {"type": "integer"}, "status": {"type": "string", "enum": ["completed", "failed"]},
                    "reason": {"type": "string"}, "created_at": {"type": "string", "format": "date-time"}}},
                "Problem": {"type": "object", "properties": {"type": {"type": "string"}, "title": {"type": "string"},
                    "status": {"type": "integer"}, "detail": {"type": "string"}}}
            }
        },
        "x-events": {
            "consumes": {"order.placed": "group payments (work queue)"},
            "publishes": {"payment.completed": {"payment_id": "string", "order_id": "string", "user_id": "string", "amount_cents": "integer", "status": "completed", "reason": "null"},
                          "payment.failed": {"payment_id": "string", "order_id": "string", "user_id": "string", "amount_cents": "integer", "status": "failed", "reason": "string"}}
        }
    }))
}
