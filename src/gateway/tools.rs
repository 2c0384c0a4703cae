//! The gateway's MCP server: tools that create and manage NotebookSessions
//! (the object is the request; the gateway keeps no state of its own), and
//! every kernel tool of the sidecar with a `session` argument, forwarded to
//! that session's sidecar with its token.
//!
//! Each call is made as the user the bearer token of its own HTTP request
//! names (reviewed by the auth middleware) and is checked with a
//! SubjectAccessReview before anything is read, created or forwarded.

use std::sync::Arc;
use std::time::Instant;

use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::ResourceExt;
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::tool::{IntoCallToolResult, ToolCallContext};
use rmcp::handler::server::wrapper::{Json, Parameters};
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, Implementation, ListToolsResult,
    PaginatedRequestParams, ProgressNotificationParam, ServerCapabilities, ServerConfig, Tool,
};
use rmcp::service::RequestContext;
use rmcp::{tool, tool_router, ErrorData, RoleServer, ServerHandler};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use tracing::Instrument;

use super::error::GatewayError;
use super::lifecycle::Settled;
use super::pools::{self, PoolSummary};
use super::review::{Access, User};
use super::sessions::{self, NewSession, SessionSummary};
use super::Gateway;
use crate::mcp::tools::wait_for;
use crate::mcp::ToolError;
use crate::operator::crd::{NotebookPool, NotebookSession};

/// How long `delete_session` waits for the object to be gone by default.
const DEFAULT_DELETE_WAIT_S: f64 = 30.0;

/// The reviewed user of the HTTP request that carried this MCP message.
fn user_of(ctx: &RequestContext<RoleServer>) -> Result<User, ToolError> {
    ctx.extensions
        .get::<axum::http::request::Parts>()
        .and_then(|p| p.extensions.get::<User>())
        .cloned()
        .ok_or_else(|| ToolError::new("unauthenticated: the request carried no reviewed user"))
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct CreateSessionParams {
    /// Name of the session (lowercase letters, digits, '-'); generated (nb-xxxxx) when absent.
    #[serde(default)]
    pub name: Option<String>,
    /// Namespace; default: your ServiceAccount's namespace, else the gateway's default.
    #[serde(default)]
    pub namespace: Option<String>,
    /// Kernel image; default: the operator's default kernel image.
    #[serde(default)]
    pub image: Option<String>,
    /// Suspend the session after this long without activity (e.g. 30m, 1h).
    #[serde(default)]
    pub idle_timeout: Option<String>,
    /// Size of a persistent volume for the workspace and queue (e.g. 1Gi); none: ephemeral.
    #[serde(default)]
    pub storage: Option<String>,
    /// Seconds to wait for the session to be Ready (default 0: return at once).
    #[serde(default)]
    pub wait_ready_s: Option<f64>,
    /// A NotebookPool in the namespace to take a warm, already started kernel
    /// from (Ready in a fraction of a cold start); the pool's template sets
    /// the image, so leave image and storage out. An empty pool starts the
    /// session cold and its status says so.
    #[serde(default)]
    pub pool: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct NamespaceParams {
    /// Namespace; default: your ServiceAccount's namespace, else the gateway's default.
    #[serde(default)]
    pub namespace: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct SessionParams {
    /// The session: its name, or namespace/name.
    pub name: String,
    /// Namespace; default: your ServiceAccount's namespace, else the gateway's default.
    #[serde(default)]
    pub namespace: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct DeleteSessionParams {
    /// The session: its name, or namespace/name.
    pub name: String,
    /// Namespace; default: your ServiceAccount's namespace, else the gateway's default.
    #[serde(default)]
    pub namespace: Option<String>,
    /// Seconds to wait until the session, its pod and its other objects are gone (default 30).
    #[serde(default)]
    pub wait_s: Option<f64>,
}

/// `create_session`: the session as it is after `waited_s` of waiting.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct CreatedSession {
    #[serde(flatten)]
    pub session: SessionSummary,
    /// Seconds the call waited for the session to be Ready.
    pub waited_s: f64,
}

/// `list_sessions`.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct SessionList {
    pub namespace: String,
    pub sessions: Vec<SessionSummary>,
}

/// `list_pools`.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct PoolList {
    pub namespace: String,
    pub pools: Vec<PoolSummary>,
}

/// `delete_session`.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct DeletedSession {
    pub namespace: String,
    pub name: String,
    pub deleted: bool,
    /// The session and everything it owned are gone (within `wait_s`).
    pub gone: bool,
}

/// The MCP server of one agent connection.
#[derive(Clone)]
pub struct GatewayTools {
    gw: Arc<Gateway>,
    kernel_tools: Arc<Vec<Tool>>,
    tool_router: ToolRouter<GatewayTools>,
}

impl GatewayTools {
    pub fn new(gw: Arc<Gateway>) -> GatewayTools {
        GatewayTools {
            gw,
            kernel_tools: Arc::new(kernel_tools()),
            tool_router: Self::tool_router(),
        }
    }

    fn api(&self, ns: &str) -> Api<NotebookSession> {
        Api::namespaced(self.gw.kube.clone(), ns)
    }

    async fn allow(
        &self,
        user: &User,
        verb: &'static str,
        ns: &str,
        name: Option<&str>,
    ) -> Result<(), ToolError> {
        Ok(self
            .gw
            .reviewer
            .authorize(user, Access::sessions(verb, ns, name))
            .await?)
    }

    /// The user asking and `(namespace, name)` of a session argument.
    fn target(
        &self,
        ctx: &RequestContext<RoleServer>,
        name: &str,
        namespace: Option<&str>,
    ) -> Result<(User, String, String), ToolError> {
        let user = user_of(ctx)?;
        let (ns, name) = sessions::session_ref(name, namespace, &user, &self.gw.cfg.default_namespace)
            .map_err(ToolError::new)?;
        Ok((user, ns, name))
    }

    /// [`Self::target`], once the user may `verb` that session.
    async fn authorized(
        &self,
        ctx: &RequestContext<RoleServer>,
        name: &str,
        namespace: Option<&str>,
        verb: &'static str,
    ) -> Result<(User, String, String), ToolError> {
        let (user, ns, name) = self.target(ctx, name, namespace)?;
        self.allow(&user, verb, &ns, Some(&name)).await?;
        Ok((user, ns, name))
    }

    async fn set_suspend(
        &self,
        p: SessionParams,
        ctx: RequestContext<RoleServer>,
        suspend: bool,
    ) -> Result<Json<SessionSummary>, ToolError> {
        let (user, ns, name) = self
            .authorized(&ctx, &p.name, p.namespace.as_deref(), "patch")
            .await?;
        // Resuming one's own suspended session makes it count again: it
        // takes a place under the cap like a create.
        let mut reservation = None;
        if !suspend && self.gw.cfg.max_sessions_per_user > 0 {
            if let Ok(Some(s)) = self.api(&ns).get_opt(&name).await {
                if s.spec.suspend && s.annotations().get(sessions::REQUESTED_BY) == Some(&user.username) {
                    reservation = self.gw.cap.reserve(&user, Some(format!("{ns}/{name}"))).await?;
                }
            }
        }
        let patch = json!({"spec": {"suspend": suspend}});
        let patched = self
            .api(&ns)
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(GatewayError::kube("patch the NotebookSession"));
        if let Some(r) = &reservation {
            self.gw.cap.release(&user, r).await;
        }
        Ok(Json(sessions::summary(&patched?)))
    }

    /// A kernel tool on the session named by the `session` argument: the
    /// sidecar's result as it sent it.
    async fn forward(
        &self,
        request: CallToolRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ToolError> {
        let mut args = request.arguments.unwrap_or_default();
        let session = match args.remove("session") {
            Some(Value::String(s)) => s,
            _ => {
                return Err(ToolError::new(
                    "session is required: the name of a session (or namespace/name) from create_session or list_sessions",
                ))
            }
        };
        let namespace = match args.remove("namespace") {
            Some(Value::String(s)) => Some(s),
            None | Some(Value::Null) => None,
            Some(_) => return Err(ToolError::new("namespace must be a string")),
        };
        let (user, ns, name) = self.target(&ctx, &session, namespace.as_deref())?;
        let span = tracing::info_span!("tool", tool = %request.name, session = %format!("{ns}/{name}"),
                                       user = %user.username);
        async move {
            let up = self.gw.session_upstream(&user, &ns, &name).await?;
            let mut params = json!({"name": request.name, "arguments": Value::Object(args)});
            // rmcp hands the request's `_meta` (the progress token) to the
            // handler in the context: pass it on so the sidecar reports progress.
            let mut meta = request
                .meta
                .as_ref()
                .and_then(|m| serde_json::to_value(m).ok())
                .filter(Value::is_object)
                .unwrap_or_else(|| json!({}));
            if let Some(token) = ctx.meta.get_progress_token() {
                meta["progressToken"] = serde_json::to_value(token).unwrap_or(Value::Null);
            }
            if meta.as_object().is_some_and(|m| !m.is_empty()) {
                params["_meta"] = meta;
            }
            // Progress notifications of the sidecar, passed on in order.
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Value>();
            let peer = ctx.peer.clone();
            let relay = tokio::spawn(async move {
                while let Some(p) = rx.recv().await {
                    if let Ok(p) = serde_json::from_value::<ProgressNotificationParam>(p) {
                        if peer.notify_progress(p).await.is_err() {
                            break;
                        }
                    }
                }
            });
            let on_progress = move |p: Value| {
                let _ = tx.send(p);
            };
            // A cancelled request drops the call to the sidecar (the
            // execution itself stays queued; cancel_execution stops it).
            let t0 = Instant::now();
            let answer = tokio::select! {
                a = self.gw.mcp.call_tool(&up, params, &on_progress) => a,
                _ = ctx.ct.cancelled() => Err(GatewayError::Upstream("the request was cancelled".into())),
            };
            self.gw.metrics.tool_seconds.observe(t0.elapsed().as_secs_f64());
            drop(on_progress);
            let _ = relay.await;
            match answer {
                Ok(Ok(result)) => serde_json::from_value::<CallToolResult>(result)
                    .map_err(|e| ToolError::new(format!("the sidecar's answer is not a tool result: {e}"))),
                Ok(Err(message)) => Err(ToolError::new(message)),
                Err(e) => {
                    self.gw.upstreams.forget(&ns, &name);
                    Err(e.into())
                }
            }
        }
        .instrument(span)
        .await
    }
}

#[tool_router]
impl GatewayTools {
    #[tool(
        description = "Create a Jupyter kernel session (a NotebookSession object) and, with wait_ready_s, wait until it is Ready. Returns its namespace, name, phase and readiness; use the kernel tools (execute, run_cell, ...) with session=<name> (or namespace/name) to work in it, and delete_session when done."
    )]
    async fn create_session(
        &self,
        Parameters(p): Parameters<CreateSessionParams>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<CreatedSession>, ToolError> {
        let user = user_of(&ctx)?;
        let wait = wait_for(p.wait_ready_s, 0.0, "wait_ready_s")?;
        let ns = sessions::namespace_for(p.namespace.as_deref(), &user, &self.gw.cfg.default_namespace);
        let new = NewSession {
            name: p.name,
            image: p.image,
            idle_timeout: p.idle_timeout,
            storage: p.storage,
            pool: p.pool,
            ..NewSession::default()
        };
        let created = self.gw.create_session(&user, &ns, &new).await?;
        let name = created.name_any();
        let t0 = Instant::now();
        let mut latest = created;
        if !wait.is_zero() {
            match self.gw.wait_settled(&ns, &name, wait).await? {
                Settled::Ready(s) | Settled::Failed(s) | Settled::TimedOut(Some(s)) => latest = *s,
                Settled::TimedOut(None) => {}
                Settled::Deleted => {
                    return Err(ToolError::new(format!(
                        "session {ns}/{name} was deleted while starting"
                    )))
                }
            }
        }
        Ok(Json(CreatedSession {
            session: sessions::summary(&latest),
            waited_s: (t0.elapsed().as_secs_f64() * 10.0).round() / 10.0,
        }))
    }

    #[tool(
        description = "The sessions in a namespace (default: your own), with phase, readiness and who asked for each."
    )]
    async fn list_sessions(
        &self,
        Parameters(p): Parameters<NamespaceParams>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<SessionList>, ToolError> {
        let user = user_of(&ctx)?;
        let ns = sessions::namespace_for(p.namespace.as_deref(), &user, &self.gw.cfg.default_namespace);
        if !sessions::is_dns_label(&ns) {
            return Err(ToolError::new(format!("{ns:?} is not a namespace name")));
        }
        self.allow(&user, "list", &ns, None).await?;
        let list = self
            .api(&ns)
            .list(&ListParams::default())
            .await
            .map_err(GatewayError::kube("list NotebookSessions"))?;
        Ok(Json(SessionList {
            sessions: list.items.iter().map(sessions::summary).collect(),
            namespace: ns,
        }))
    }

    #[tool(
        description = "The NotebookPools in a namespace (default: your own): warm, already started kernels that create_session with pool=<name> hands out. For each: kernel image, replicas, how many warm pods are ready to claim now (ready; at 0 a session starts cold), warm, claimed, and the pool's Ready condition."
    )]
    async fn list_pools(
        &self,
        Parameters(p): Parameters<NamespaceParams>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<PoolList>, ToolError> {
        let user = user_of(&ctx)?;
        let ns = sessions::namespace_for(p.namespace.as_deref(), &user, &self.gw.cfg.default_namespace);
        if !sessions::is_dns_label(&ns) {
            return Err(ToolError::new(format!("{ns:?} is not a namespace name")));
        }
        let span = tracing::info_span!("tool", tool = "list_pools", namespace = %ns, user = %user.username);
        async move {
            self.gw
                .reviewer
                .authorize(&user, Access::pools("list", &ns))
                .await?;
            let api: Api<NotebookPool> = Api::namespaced(self.gw.kube.clone(), &ns);
            let list = api
                .list(&ListParams::default())
                .await
                .map_err(GatewayError::kube("list NotebookPools"))?;
            Ok(Json(PoolList {
                pools: list.items.iter().map(pools::summary).collect(),
                namespace: ns,
            }))
        }
        .instrument(span)
        .await
    }

    #[tool(description = "One session: phase, readiness, queue counts, last activity.")]
    async fn get_session(
        &self,
        Parameters(p): Parameters<SessionParams>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<SessionSummary>, ToolError> {
        let (_, ns, name) = self
            .authorized(&ctx, &p.name, p.namespace.as_deref(), "get")
            .await?;
        let s = self
            .api(&ns)
            .get_opt(&name)
            .await
            .map_err(GatewayError::kube("read the NotebookSession"))?
            .ok_or_else(|| ToolError::new(format!("no session {ns}/{name}")))?;
        Ok(Json(sessions::summary(&s)))
    }

    #[tool(
        description = "Delete a session: its kernel pod, token, service and storage go with it. Waits up to wait_s (default 30 s) until everything is gone."
    )]
    async fn delete_session(
        &self,
        Parameters(p): Parameters<DeleteSessionParams>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<DeletedSession>, ToolError> {
        let wait = wait_for(p.wait_s, DEFAULT_DELETE_WAIT_S, "wait_s")?;
        let (user, ns, name) = self
            .authorized(&ctx, &p.name, p.namespace.as_deref(), "delete")
            .await?;
        // Foreground: the object stays until the objects it owns are gone,
        // so "gone" means the pod is gone too.
        let gone = self.gw.delete_session(&user, &ns, &name, wait).await?;
        Ok(Json(DeletedSession {
            namespace: ns,
            name,
            deleted: true,
            gone,
        }))
    }

    #[tool(
        description = "Suspend a session: its kernel pod is removed (variables are lost), its storage, token and queue history are kept. resume_session starts it again."
    )]
    async fn suspend_session(
        &self,
        Parameters(p): Parameters<SessionParams>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<SessionSummary>, ToolError> {
        self.set_suspend(p, ctx, true).await
    }

    #[tool(
        description = "Resume a suspended session: a new kernel pod starts; get_session shows when it is Ready."
    )]
    async fn resume_session(
        &self,
        Parameters(p): Parameters<SessionParams>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<SessionSummary>, ToolError> {
        self.set_suspend(p, ctx, false).await
    }
}

/// The sidecar's kernel tools, each with a required `session` argument
/// (and an optional `namespace`).
pub fn kernel_tools() -> Vec<Tool> {
    crate::mcp::Tools::definitions()
        .into_iter()
        .map(with_session_argument)
        .collect()
}

fn with_session_argument(mut tool: Tool) -> Tool {
    let mut schema: Map<String, Value> = (*tool.input_schema).clone();
    let props = schema
        .entry("properties")
        .or_insert_with(|| Value::Object(Map::new()));
    if let Some(props) = props.as_object_mut() {
        props.insert(
            "session".into(),
            json!({"type": "string", "description": "The session to run this in: its name, or namespace/name (see create_session, list_sessions)."}),
        );
        props.insert(
            "namespace".into(),
            json!({"type": "string", "description": "Namespace of the session; default: your ServiceAccount's namespace, else the gateway's default."}),
        );
    }
    let required = schema.entry("required").or_insert_with(|| Value::Array(vec![]));
    if let Some(req) = required.as_array_mut() {
        req.insert(0, Value::String("session".into()));
    }
    schema.insert("type".into(), Value::String("object".into()));
    tool.input_schema = Arc::new(schema);
    tool
}

impl ServerHandler for GatewayTools {
    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let tool = request.name.to_string();
        let answer = if self.tool_router.has_route(&request.name) {
            self.tool_router
                .call(ToolCallContext::new(self, request, context))
                .await
        } else if self.kernel_tools.iter().any(|t| t.name == request.name) {
            self.forward(request, context).await.into_call_tool_result()
        } else {
            return Err(ErrorData::invalid_params(format!("no tool {tool}"), None));
        };
        let error = match &answer {
            Ok(CallToolResponse::Complete(r)) => r.is_error == Some(true),
            Ok(_) => false,
            Err(_) => true,
        };
        self.gw.metrics.tool(&tool, error);
        answer
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let mut tools = self.tool_router.list_all();
        tools.extend(self.kernel_tools.iter().cloned());
        Ok(ListToolsResult {
            tools,
            ..ListToolsResult::default()
        })
    }

    fn get_tool(&self, name: &str) -> Option<Tool> {
        self.tool_router
            .get(name)
            .cloned()
            .or_else(|| self.kernel_tools.iter().find(|t| t.name == name).cloned())
    }

    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new(
                "notebook-operator-gateway",
                env!("CARGO_PKG_VERSION"),
            ))
            .with_instructions(
                "Jupyter kernels on Kubernetes. create_session (with wait_ready_s) gives you a kernel; \
                 list_pools shows warm pools whose name, as create_session's pool, gives one at once; \
                 run code with execute, build notebooks with create_notebook, insert_cell and run_cell, \
                 each with session=<name>. Executions are queued durably: a long one returns an id that \
                 get_execution fetches later. delete_session when you are done.",
            )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kernel_tool_takes_a_required_session() {
        let tools = kernel_tools();
        assert!(tools.len() >= 20, "{}", tools.len());
        for t in &tools {
            let props = t.input_schema["properties"].as_object().unwrap();
            assert!(
                props.contains_key("session") && props.contains_key("namespace"),
                "{}",
                t.name
            );
            let required: Vec<&str> = t.input_schema["required"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(Value::as_str)
                .collect();
            assert!(required.contains(&"session"), "{}", t.name);
        }
        let execute = tools.iter().find(|t| t.name == "execute").unwrap();
        let required = execute.input_schema["required"].as_array().unwrap();
        assert!(required.contains(&json!("code")));
    }

    #[test]
    fn no_kernel_tool_already_has_an_argument_named_session_or_namespace() {
        for t in crate::mcp::Tools::definitions() {
            let props = t.input_schema.get("properties").and_then(Value::as_object);
            assert!(
                props.is_none_or(|p| !p.contains_key("session") && !p.contains_key("namespace")),
                "{} would lose an argument to the gateway",
                t.name
            );
        }
    }

    #[test]
    fn session_tools_publish_object_output_schemas_and_kernel_tools_keep_theirs() {
        for t in GatewayTools::tool_router().list_all() {
            let schema = t.output_schema.as_ref().unwrap_or_else(|| panic!("{}", t.name));
            assert_eq!(schema["type"], "object", "{}", t.name);
        }
        let created = GatewayTools::tool_router()
            .list_all()
            .into_iter()
            .find(|t| t.name == "create_session")
            .and_then(|t| t.output_schema)
            .unwrap();
        // The summary is flattened into the answer beside waited_s.
        let props = created["properties"].as_object().unwrap();
        assert!(
            props.contains_key("waited_s") && props.contains_key("session") && props.contains_key("phase")
        );
        let sidecar = crate::mcp::Tools::definitions();
        for t in kernel_tools() {
            let own = sidecar.iter().find(|s| s.name == t.name).unwrap();
            assert_eq!(t.output_schema, own.output_schema, "{}", t.name);
        }
    }

    #[test]
    fn list_pools_publishes_the_counts_and_the_ready_condition_in_its_output_schema() {
        let tool = GatewayTools::tool_router()
            .list_all()
            .into_iter()
            .find(|t| t.name == "list_pools")
            .expect("a list_pools tool");
        let schema = tool.output_schema.expect("an output schema");
        let props = schema["properties"].as_object().unwrap();
        assert!(
            props.contains_key("namespace") && props.contains_key("pools"),
            "{props:?}"
        );
        let pool = &schema["$defs"]["PoolSummary"]["properties"];
        for field in [
            "name",
            "image",
            "replicas",
            "ready",
            "warm",
            "claimed",
            "condition",
        ] {
            assert!(pool.get(field).is_some(), "{field} in {pool}");
        }
        let input = tool.input_schema.get("properties").and_then(Value::as_object);
        assert!(input.is_some_and(|p| p.contains_key("namespace")), "{input:?}");
    }

    #[test]
    fn session_tools_and_kernel_tools_do_not_share_names() {
        let own: Vec<String> = GatewayTools::tool_router()
            .list_all()
            .into_iter()
            .map(|t| t.name.to_string())
            .collect();
        assert_eq!(own.len(), 7, "{own:?}");
        for t in kernel_tools() {
            assert!(!own.contains(&t.name.to_string()), "{}", t.name);
        }
    }
}
