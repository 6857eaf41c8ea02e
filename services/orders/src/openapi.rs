//! `GET /openapi.json`: the orders API as an OpenAPI 3.1 document, written by hand.

use axum::Json;
use serde_json::{json, Value};

pub async fn document() -> Json<Value> {
    let problem = json!({"description": "problem+json", "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}});
    let order = json!({"application/json": {"schema": {"$ref": "#/components/schemas/Order"}}});
    Json(json!({
        "openapi": "3.1.0",
        "info": {"title": "Stratus orders", "version": env!("CARGO_PKG_VERSION"),
                 "description": "Orders of the reference shop. Placing one starts the saga: order.placed -> payments -> payment.completed | payment.failed -> the order is paid or failed."},
        "security": [{"bearer": []}],
        "paths": {
            "/api/orders": {
                "post": {
                    "summary": "Place an order (prices come from the catalog)",
                    "parameters": [{"name": "Idempotency-Key", "in": "header", "required": true,
                        "description": "Unique per order; a retry with the same key returns the same order (200), never a second one.",
                        "schema": {"type": "string", "minLength": 1, "maxLength": 200}}],
                    "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/OrderInput"}}}},
                    "responses": {
                        "201": {"description": "placed, pending payment", "content": order},
                        "200": {"description": "the same Idempotency-Key again: the first answer", "content": order},
                        "400": problem, "401": problem, "413": problem, "415": problem,
                        "422": {"description": "invalid items, an unknown product, or a key reused for another order", "content": problem["content"]},
                        "503": {"description": "the catalog is unavailable; see Retry-After", "content": problem["content"]}
                    }
                },
                "get": {
                    "summary": "The caller's orders, newest first (admins: ?all=true for everyone's)",
                    "parameters": [
                        {"name": "all", "in": "query", "schema": {"type": "boolean"}},
                        {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}},
                        {"name": "offset", "in": "query", "schema": {"type": "integer", "minimum": 0, "default": 0}}
                    ],
                    "responses": {"200": {"description": "orders", "content": {"application/json": {"schema": {"type": "array", "items": {"$ref": "#/components/schemas/Order"}}}}},
                                  "400": problem, "401": problem, "403": problem}
                }
            },
            "/api/orders/{id}": {
                "get": {
                    "summary": "One order (its owner or an admin)",
                    "parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "string"}}],
                    "responses": {"200": {"description": "the order", "content": order}, "401": problem,
                                  "404": {"description": "no such order, or not the caller's", "content": problem["content"]}}
                }
            }
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
            "schemas": {
                "OrderInput": {"type": "object", "additionalProperties": false, "required": ["items"], "properties": {
                    "items": {"type": "array", "minItems": 1, "maxItems": 50, "items": {"type": "object", "additionalProperties": false,
                        "required": ["product_id", "quantity"], "properties": {
                            "product_id": {"type": "string", "pattern": "^[A-Za-z0-9-]{1,64}$"},
                            "quantity": {"type": "integer", "minimum": 1, "maximum": 100}}}}}},
                "Order": {"type": "object", "properties": {
                    "id": {"type": "string", "format": "uuid", "description": "UUIDv7"},
                    "user_id": {"type": "string"},
                    "status": {"type": "string", "enum": ["pending", "paid", "failed"]},
                    "total": {"type": "integer", "description": "cents"},
                    "items": {"type": "array", "items": {"type": "object", "properties": {
                        "product_id": {"type": "string"}, "quantity": {"type": "integer"},
                        "unit_price_cents": {"type": "integer"}, "line_total_cents": {"type": "integer"}}}},
                    "created_at": {"type": "string", "format": "date-time"},
                    "updated_at": {"type": "string", "format": "date-time"}}},
                "Problem": {"type": "object", "properties": {"type": {"type": "string"}, "title": {"type": "string"},
                    "status": {"type": "integer"}, "detail": {"type": "string"}}}
            }
        },
        "x-events": {
            "publishes": {"order.placed": {"order_id": "string", "user_id": "string", "total_cents": "integer", "items": "Order.items"}},
            "consumes": {"payment.completed": "group orders", "payment.failed": "group orders"}
        }
    }))
}
