//! A small real HTTP backend for tests: every `POST` to its URL is
//! recorded (body and `Authorization` header) and answered by a function of
//! the body: a status, a JSON answer, and a delay before answering (to play
//! a slow backend).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio::sync::Mutex;

/// The calls so far: `{"call": body, "authorization": header or null}`.
pub type Calls = Arc<Mutex<Vec<Value>>>;

/// How the backend answers a call.
pub struct Answer {
    pub status: u16,
    pub body: Value,
    pub delay: Option<Duration>,
}

impl Answer {
    /// 200 with `body`, at once.
    pub fn json(body: Value) -> Answer {
        Answer {
            status: 200,
            body,
            delay: None,
        }
    }
}

type Decide = Arc<dyn Fn(&Value) -> Answer + Send + Sync>;

/// Start a backend on a free port; its URL (path `/hook`) and its calls.
pub async fn start(decide: impl Fn(&Value) -> Answer + Send + Sync + 'static) -> (String, Calls) {
    let calls: Calls = Default::default();
    let state = (calls.clone(), Arc::new(decide) as Decide);
    let handle = |State((calls, decide)): State<(Calls, Decide)>,
                  headers: HeaderMap,
                  Json(body): Json<Value>| async move {
        let auth = headers.get("authorization").and_then(|v| v.to_str().ok());
        calls
            .lock()
            .await
            .push(json!({"call": body.clone(), "authorization": auth}));
        let answer = decide(&body);
        if let Some(delay) = answer.delay {
            tokio::time::sleep(delay).await;
        }
        let status = StatusCode::from_u16(answer.status).expect("a status");
        (status, Json(answer.body)).into_response()
    };
    let app = Router::new()
        .route("/hook", axum::routing::post(handle))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, calls)
}
