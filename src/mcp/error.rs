//! The one error type of the MCP tools (the sidecar's and the gateway's).
//!
//! A failure the caller can cause or should know of (bad path, unknown cell,
//! unknown id, bad argument, a refusal) is a tool result with `isError: true`
//! whose one text block says what to change, so the agent reads it as the
//! tool's answer. Arguments that do not match the input schema stay
//! protocol-level errors (`ErrorData`), raised by rmcp before a tool runs.

use rmcp::handler::server::tool::IntoCallToolResult;
use rmcp::model::{CallToolResponse, CallToolResult, ContentBlock};
use rmcp::ErrorData;

/// A tool's refusal: its message, for the agent.
///
/// Not a `std::error::Error` itself, so that every error type converts into
/// it with `?` (by its `Display`), the way every caller used to spell
/// `e.to_string()`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolError(String);

impl ToolError {
    pub fn new(message: impl Into<String>) -> ToolError {
        ToolError(message.into())
    }

    pub fn message(&self) -> &str {
        &self.0
    }
}

impl<E: std::error::Error> From<E> for ToolError {
    fn from(e: E) -> ToolError {
        ToolError(e.to_string())
    }
}

impl From<ToolError> for CallToolResult {
    fn from(e: ToolError) -> CallToolResult {
        CallToolResult::error(vec![ContentBlock::text(e.0)])
    }
}

impl IntoCallToolResult for ToolError {
    fn into_call_tool_result(self) -> Result<CallToolResponse, ErrorData> {
        Ok(CallToolResult::from(self).into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rmcp::handler::server::wrapper::Json;

    #[test]
    fn a_refusal_is_a_tool_result_with_its_message() {
        let r: Result<Json<serde_json::Value>, ToolError> = Err(ToolError::new("no execution x"));
        let Ok(CallToolResponse::Complete(r)) = r.into_call_tool_result() else {
            panic!("a refusal is a complete tool result, not a protocol error");
        };
        assert_eq!(r.is_error, Some(true));
        assert_eq!(r.structured_content, None);
        assert_eq!(r.content.len(), 1);
        assert_eq!(
            r.content[0].as_text().map(|t| t.text.as_str()),
            Some("no execution x")
        );
        let io = std::io::Error::other("disk full");
        assert_eq!(ToolError::from(io).message(), "disk full");
    }
}
