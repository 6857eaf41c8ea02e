//! Comparing a document with the operations a router serves.
//!
//! The comparison runs both ways: an operation the router serves and the document lacks is
//! invisible to every client and to schemathesis; one the document promises and the router
//! lacks is a 404 or 405 waiting for whoever believes it. Both are reported together, so one
//! failing test lists everything that is wrong rather than the first thing.

use std::collections::BTreeSet;
use std::fmt;

use serde_json::Value;

/// The methods an OpenAPI 3.0 path item can describe; its other keys (`parameters`, `summary`,
/// `servers`, ...) are not operations.
const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// One operation: a method (lower case, as OpenAPI spells it) on a path template (`/v1/x/{id}`,
/// the same in axum 0.8 and OpenAPI).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Operation {
    pub method: &'static str,
    pub path: String,
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.method.to_ascii_uppercase(), self.path)
    }
}

/// Everything wrong with a document, one line each.
#[derive(Debug, thiserror::Error)]
#[error("the OpenAPI document does not match the router: {}", .problems.join("; "))]
pub struct DocumentError {
    pub problems: Vec<String>,
}

/// Checks that `document` is OpenAPI 3.0 and describes exactly the operations in `served`: every
/// served operation documented with at least one answer, every documented operation served, and
/// every `{parameter}` of a path template declared as a path parameter.
pub fn check(document: &str, served: &[Operation]) -> Result<(), DocumentError> {
    let fail = |problem: String| DocumentError {
        problems: vec![problem],
    };
    let document: Value =
        serde_json::from_str(document).map_err(|e| fail(format!("not JSON: {e}")))?;
    let version = document["openapi"].as_str().unwrap_or_default();
    if !version.starts_with("3.0.") {
        return Err(fail(format!("openapi must be 3.0.x, not {version:?}")));
    }
    let paths = document["paths"]
        .as_object()
        .ok_or_else(|| fail("the document has no paths".into()))?;

    let mut problems = Vec::new();
    let mut documented = BTreeSet::new();
    for (path, item) in paths {
        for method in METHODS.into_iter().filter(|m| item.get(*m).is_some()) {
            let operation = &item[method];
            let answers = operation["responses"].as_object();
            if answers.is_none_or(|a| a.is_empty()) {
                problems.push(format!(
                    "{} {path} documents no response",
                    method.to_ascii_uppercase()
                ));
            }
            for name in template_parameters(path) {
                if !declares_path_parameter(&document, item, operation, name) {
                    problems.push(format!(
                        "{} {path} does not declare the path parameter `{name}`",
                        method.to_ascii_uppercase()
                    ));
                }
            }
            documented.insert(Operation {
                method,
                path: path.clone(),
            });
        }
    }
    let served: BTreeSet<Operation> = served.iter().cloned().collect();
    for missing in served.difference(&documented) {
        problems.push(format!("{missing} is served but not documented"));
    }
    for extra in documented.difference(&served) {
        problems.push(format!("{extra} is documented but not served"));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(DocumentError { problems })
    }
}

/// The names between braces in a path template: `id` and `name` in `/a/{id}/b/{name}`.
fn template_parameters(path: &str) -> impl Iterator<Item = &str> {
    path.split('/')
        .filter_map(|segment| segment.strip_prefix('{')?.strip_suffix('}'))
}

/// Whether `name` is declared `in: path`, on the operation or on its path item (following a
/// local `$ref` such as `#/components/parameters/Name`).
fn declares_path_parameter(document: &Value, item: &Value, operation: &Value, name: &str) -> bool {
    [&item["parameters"], &operation["parameters"]]
        .into_iter()
        .filter_map(Value::as_array)
        .flatten()
        .map(|parameter| resolve(document, parameter))
        .any(|parameter| parameter["in"] == "path" && parameter["name"] == name)
}

/// `value` itself, or what its local `$ref` points at (`Null` when it points nowhere).
fn resolve<'a>(document: &'a Value, value: &'a Value) -> &'a Value {
    match value["$ref"].as_str().and_then(|r| r.strip_prefix('#')) {
        Some(pointer) => document.pointer(pointer).unwrap_or(&Value::Null),
        None => value,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(method: &'static str, path: &str) -> Operation {
        Operation {
            method,
            path: path.into(),
        }
    }

    const DOCUMENT: &str = r##"{
        "openapi": "3.0.3",
        "components": {"parameters": {"Id": {"name": "id", "in": "path", "required": true}}},
        "paths": {
            "/a": {"summary": "a", "get": {"responses": {"200": {"description": "ok"}}}},
            "/a/{id}": {
                "parameters": [{"$ref": "#/components/parameters/Id"}],
                "put": {"responses": {"200": {"description": "ok"}}}
            }
        }
    }"##;

    #[test]
    fn a_document_naming_exactly_the_served_operations_passes() {
        check(DOCUMENT, &[op("get", "/a"), op("put", "/a/{id}")]).unwrap();
    }

    #[test]
    fn a_served_operation_the_document_lacks_fails() {
        let served = [
            op("get", "/a"),
            op("put", "/a/{id}"),
            op("delete", "/a/{id}"),
        ];
        let error = check(DOCUMENT, &served).unwrap_err();
        assert_eq!(
            error.problems,
            ["DELETE /a/{id} is served but not documented"]
        );
    }

    #[test]
    fn a_documented_operation_the_router_lacks_fails() {
        let error = check(DOCUMENT, &[op("get", "/a")]).unwrap_err();
        assert_eq!(error.problems, ["PUT /a/{id} is documented but not served"]);
    }

    #[test]
    fn an_undeclared_path_parameter_fails() {
        let document = DOCUMENT.replace(r#""name": "id""#, r#""name": "key""#);
        let error = check(&document, &[op("get", "/a"), op("put", "/a/{id}")]).unwrap_err();
        assert_eq!(
            error.problems,
            ["PUT /a/{id} does not declare the path parameter `id`"]
        );
    }

    #[test]
    fn an_operation_without_answers_fails() {
        let document = r#"{"openapi": "3.0.3", "paths": {"/a": {"get": {"responses": {}}}}}"#;
        let error = check(document, &[op("get", "/a")]).unwrap_err();
        assert_eq!(error.problems, ["GET /a documents no response"]);
    }

    #[test]
    fn only_openapi_3_0_is_accepted() {
        assert!(check(r#"{"openapi": "3.1.0", "paths": {}}"#, &[]).is_err());
        assert!(check("{", &[]).is_err());
    }
}
