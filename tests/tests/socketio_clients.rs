//! The Socket.IO front-end (`/socket.io/`) against real processes: the
//! official `socket.io-client` 4.x under node on two nodes sharing a Redis,
//! with rooms as mesh channels, Flamenco's `/subscription` table, namespaces
//! and JWT auth, over WebSocket and long-polling (alone, with the upgrade,
//! and through a round-robin balancer: no sticky sessions).

use pubmesh_tests::harness::{config_file, hs256, hs256_with, patience, Node, Redis};
use pubmesh_tests::js::Script;
use serde_json::{json, Value};

const SECRET: &str = "socketio-secret";

/// Flamenco's rooms and `/subscription` table (docs/socketio.md), plus an
/// `/admin` namespace with a default room, and a channel rule reading the
/// token's claims (only tokens whose `channels` claim lists it may join
/// `Workers`).
pub const FLAMENCO: &str = r#"
[[namespaces]]
pattern = "Workers"
subscribe = "claim"

[socketio]
ping_interval_ms = 1000
ping_timeout_ms = 2000

[[socketio.namespaces]]
name = "/"
rooms = ["Chat"]

[[socketio.namespaces]]
name = "/admin"
rooms = ["ops"]

[[socketio.join_events]]
event = "/subscription"
op_field = "op"
subscribe = "subscribe"
unsubscribe = "unsubscribe"
type_field = "type"
id_field = "uuid"
id_format = "uuid"
ok = "ok"
invalid_id = "invalid UUID, ignoring request"
unknown_type = "unknown subscription type, ignoring request"
invalid_op = "invalid subscription operation, ignoring request"
failed = "unable to perform subscription operation: "

[socketio.join_events.types]
allJobs = { rooms = ["Jobs"] }
allWorkers = { rooms = ["Workers"] }
allWorkerTags = { rooms = ["WorkerTags"] }
allLastRendered = { rooms = ["Last-Rendered"] }
job = { rooms = ["job-{id}"], missing_id = "operation on job requires a UUID" }
tasklog = { rooms = ["tasklog-{id}"], missing_id = "operation on task requires a UUID" }
"#;

async fn two_nodes(redis: &Redis, extra: &[&str]) -> (Node, Node) {
    let url = redis.url();
    let file = config_file(FLAMENCO);
    let mut args = vec![
        "--redis-url",
        url.as_str(),
        "--jwt-secret",
        SECRET,
        "--config",
        file.as_str(),
    ];
    args.extend_from_slice(extra);
    pubmesh_tests::harness::two_nodes(&args).await
}

/// The official 4.x client on `node` (namespace `nsp`), WebSocket only
/// unless `options` say otherwise.
fn client(node: &Node, nsp: &str, options: Value) -> Script {
    client_at_path(node.port, nsp, options)
}

fn client_at_path(port: u16, nsp: &str, options: Value) -> Script {
    let url = format!("http://127.0.0.1:{port}{nsp}");
    Script::spawn("socketio_client.js", &[&url, "4", &options.to_string()])
}

/// The client on `/` at `port` (a node, or a balancer).
fn client_at(port: u16, options: Value) -> Script {
    client_at_path(port, "/", options)
}

async fn connected(script: &mut Script) -> Value {
    script.wait_event("connect", patience(60)).await
}

/// The next event named `name` the client receives.
async fn event(script: &mut Script, name: &str) -> Value {
    script
        .wait_for(name, patience(30), |v| {
            v["event"] == "event" && v["name"] == name
        })
        .await
}

/// Emit `args` as `name` with an ack callback; the ack's arguments.
async fn emit_ack(script: &mut Script, name: &str, args: Value) -> Value {
    let line = json!({"emit": name, "args": args, "ack": true, "timeout": 20000});
    script.send_line(&line.to_string()).await;
    let ack = script
        .wait_for("an ack", patience(30), |v| v["event"] == "ack")
        .await;
    assert!(ack.get("error").is_none(), "ack error: {ack}");
    ack["args"].clone()
}

async fn notify(node: &Node, channel: &str, event: &str, data: Value) {
    let (status, body) = node
        .post(
            "/api/notify/channels",
            json!({"channel_ids": [channel], "event": event, "data": data}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn rooms_are_channels_across_two_nodes_with_flamencos_subscription_table() {
    let redis = Redis::start().await;
    let (a, b) = two_nodes(&redis, &[]).await;
    let token = hs256(SECRET, "bob", 600);

    let mut anon = client(&a, "/", json!({}));
    let hello = connected(&mut anon).await;
    assert!(
        hello["id"].as_str().is_some_and(|id| !id.is_empty()),
        "{hello}"
    );
    let mut bob = client(&b, "/", json!({"auth": {"token": token}}));
    connected(&mut bob).await;
    // Both joined the default room on connect.
    a.wait_members("Chat", 2).await;

    // A room event from the server API of either node reaches both.
    notify(
        &b,
        "Chat",
        "/message",
        json!({"name": "mgr", "text": "hello"}),
    )
    .await;
    for script in [&mut anon, &mut bob] {
        let m = event(script, "/message").await;
        assert_eq!(m["args"], json!([{"name": "mgr", "text": "hello"}]));
    }

    // Flamenco's /subscription, each answer of its table.
    let job = "fa48930a-105c-4125-a7f7-0aa1651dcd57";
    let task = "0b8d5f6b-4b6f-4a57-9a0e-6c1d4b1e8a39";
    let sub = |op: &str, kind: &str, uuid: Option<&str>| {
        let mut v = json!({"op": op, "type": kind});
        if let Some(u) = uuid {
            v["uuid"] = json!(u);
        }
        json!([v])
    };
    for (args, answer) in [
        (sub("subscribe", "job", Some(job)), "ok"),
        (sub("subscribe", "tasklog", Some(task)), "ok"),
        (sub("subscribe", "allJobs", None), "ok"),
        (
            sub("subscribe", "job", Some("not-a-uuid")),
            "invalid UUID, ignoring request",
        ),
        (
            sub("subscribe", "job", None),
            "operation on job requires a UUID",
        ),
        (
            sub("subscribe", "tasklog", None),
            "operation on task requires a UUID",
        ),
        (
            sub("subscribe", "allTheThings", None),
            "unknown subscription type, ignoring request",
        ),
        (
            sub("join", "allWorkers", None),
            "invalid subscription operation, ignoring request",
        ),
    ] {
        assert_eq!(
            emit_ack(&mut anon, "/subscription", args.clone()).await,
            json!([answer]),
            "{args}"
        );
    }
    // A join the channel rules refuse: the `failed` answer and the reason.
    // The rule reads the token's claims: a socket whose `channels` claim
    // lists Workers joins it.
    let workers = sub("subscribe", "allWorkers", None);
    assert_eq!(
        emit_ack(&mut anon, "/subscription", workers.clone()).await,
        json!([
            "unable to perform subscription operation: not allowed to subscribe to channel \"Workers\""
        ])
    );
    let claims = json!({"sub": "carol", "channels": ["Workers"]});
    let carol_token = hs256_with(SECRET, claims, 600);
    let mut carol = client(&b, "/", json!({"auth": {"token": carol_token}}));
    connected(&mut carol).await;
    assert_eq!(
        emit_ack(&mut carol, "/subscription", workers).await,
        json!(["ok"])
    );
    a.wait_members("Workers", 1).await;

    // The joined rooms are channels the other node publishes to.
    let job_room = format!("job-{job}");
    let task_room = format!("tasklog-{task}");
    b.wait_members(&job_room, 1).await;
    notify(
        &b,
        &job_room,
        "/task",
        json!({"id": task, "job_id": job, "status": "active"}),
    )
    .await;
    notify(
        &b,
        &task_room,
        "/tasklog",
        json!({"task_id": task, "log": "line 1\n"}),
    )
    .await;
    notify(&b, "Jobs", "/jobs", json!({"id": job, "status": "active"})).await;
    let m = event(&mut anon, "/task").await;
    assert_eq!(m["args"][0]["job_id"], job);
    let m = event(&mut anon, "/tasklog").await;
    assert_eq!(m["args"][0]["log"], "line 1\n");
    let m = event(&mut anon, "/jobs").await;
    assert_eq!(m["args"][0]["status"], "active");

    // Bob subscribed to nothing: the next thing he gets is the next Chat
    // message, not the job events.
    notify(
        &a,
        "Chat",
        "/message",
        json!({"name": "mgr", "text": "two"}),
    )
    .await;
    let next = bob
        .wait_for("an event", patience(30), |v| v["event"] == "event")
        .await;
    assert_eq!(next["name"], "/message", "{next}");
    assert_eq!(next["args"][0]["text"], "two");

    // Unsubscribing leaves the channel.
    assert_eq!(
        emit_ack(
            &mut anon,
            "/subscription",
            sub("unsubscribe", "job", Some(job))
        )
        .await,
        json!(["ok"])
    );
    a.wait_members(&job_room, 0).await;
    // Per-namespace metrics: the 10 client events anon sent on A, carol's
    // one on B.
    let events_in = r#"pubmesh_socketio_events_in_total{namespace="/"}"#;
    assert_eq!(a.metric(events_in).await, 10.0);
    assert_eq!(b.metric(events_in).await, 1.0);

    // To one socket, by its id, from the other node: an event in `/`.
    let (status, body) = b
        .post(
            "/api/notify/clients",
            json!({"client_ids": [hello["id"]], "data": {"just": "you"}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        event(&mut anon, "message").await["args"],
        json!([{"just": "you"}])
    );

    // A client leaving ends all its memberships.
    anon.send_line(r#"{"disconnect":true}"#).await;
    anon.wait_event("disconnect", patience(30)).await;
    b.wait_members("Chat", 2).await;
    b.wait_members(&task_room, 0).await;
    b.wait_members("Jobs", 0).await;
}

#[tokio::test]
async fn namespaces_tokens_and_connect_errors() {
    let redis = Redis::start().await;
    let (a, b) = two_nodes(&redis, &[]).await;

    // A namespace that is not served.
    let mut nowhere = client(&a, "/nowhere", json!({}));
    let refused = nowhere.wait_event("connect_error", patience(60)).await;
    assert_eq!(refused["message"], "Invalid namespace");

    // A token that does not verify.
    let mut forged = client(
        &a,
        "/",
        json!({"auth": {"token": hs256("wrong", "eve", 600)}}),
    );
    let refused = forged.wait_event("connect_error", patience(60)).await;
    assert_eq!(refused["message"], "the token is not valid");

    // The /admin namespace has rooms of its own, as `/admin:<room>` channels.
    let mut admin = client(&a, "/admin", json!({}));
    connected(&mut admin).await;
    b.wait_members("/admin:ops", 1).await;
    assert_eq!(b.channel_members("ops").await, 0);
    notify(&b, "/admin:ops", "alert", json!({"level": 3})).await;
    let m = event(&mut admin, "alert").await;
    assert_eq!(m["args"], json!([{"level": 3}]));
    // Rooms of `/` do not reach it.
    notify(&b, "Chat", "/message", json!({"text": "not for admin"})).await;
    notify(&b, "/admin:ops", "alert", json!({"level": 4})).await;
    let m = admin
        .wait_for("an event", patience(30), |v| v["event"] == "event")
        .await;
    assert_eq!(m["args"], json!([{"level": 4}]), "{m}");
}

#[tokio::test]
async fn require_auth_refuses_a_connect_without_a_token_and_admits_one_with() {
    let redis = Redis::start().await;
    let (a, _b) = two_nodes(&redis, &["--require-auth"]).await;
    let mut anon = client(&a, "/", json!({}));
    let refused = anon.wait_event("connect_error", patience(60)).await;
    assert_eq!(
        refused["message"],
        "this node requires a token (auth.token)"
    );
    let token = hs256(SECRET, "alice", 600);
    let mut alice = client(&a, "/", json!({"auth": {"token": token}}));
    connected(&mut alice).await;
    a.wait_members("Chat", 1).await;
    // Pings keep it connected past several ping intervals (1 s).
    notify(&a, "Chat", "/message", json!({"n": 1})).await;
    event(&mut alice, "/message").await;
    // Time must pass for pings to matter: three and a half intervals.
    tokio::time::sleep(std::time::Duration::from_millis(3500)).await;
    notify(&a, "Chat", "/message", json!({"n": 2})).await;
    let m = event(&mut alice, "/message").await;
    assert_eq!(m["args"], json!([{"n": 2}]));
}

async fn subscribe_all_jobs(script: &mut Script) {
    let line = json!({"emit": "/subscription", "args": [{"op": "subscribe", "type": "allJobs"}], "ack": true, "timeout": 20000});
    script.send_line(&line.to_string()).await;
    let ack = script
        .wait_for("an ack", patience(30), |v| v["event"] == "ack")
        .await;
    assert_eq!(ack["args"], json!(["ok"]), "{ack}");
}

#[tokio::test]
async fn polling_alone_then_polling_with_the_upgrade() {
    let redis = Redis::start().await;
    let (a, b) = two_nodes(&redis, &[]).await;
    let token = hs256(SECRET, "poller", 600);

    // Polling only: auth, rooms, acks, events from the other node, and
    // pings (1 s) over several intervals.
    let mut poller = client_at(
        a.port,
        json!({"transports": ["polling"], "auth": {"token": token}}),
    );
    let hello = poller.wait_event("connect", patience(60)).await;
    assert_eq!(hello["transport"], "polling", "{hello}");
    a.wait_members("Chat", 1).await;
    subscribe_all_jobs(&mut poller).await;
    b.wait_members("Jobs", 1).await;
    notify(&b, "Jobs", "/jobs", json!({"id": 1})).await;
    assert_eq!(
        event(&mut poller, "/jobs").await["args"],
        json!([{"id": 1}])
    );
    // Time must pass for pings to matter.
    tokio::time::sleep(std::time::Duration::from_millis(3500)).await;
    notify(&b, "Chat", "/message", json!({"text": "still here"})).await;
    assert_eq!(
        event(&mut poller, "/message").await["args"],
        json!([{"text": "still here"}])
    );

    // The default: polling first, then the upgrade to WebSocket.
    let mut upgrader = client_at(a.port, json!({"transports": ["polling", "websocket"]}));
    // It connects, and upgrades (the upgrade may finish before or after the
    // CONNECT reply).
    let (mut connect, mut upgrade) = (None, None);
    while connect.is_none() || upgrade.is_none() {
        let v = upgrader
            .wait_for("connect and upgrade", patience(60), |v| {
                v["event"] == "connect" || v["event"] == "upgrade"
            })
            .await;
        if v["event"] == "connect" {
            connect = Some(v);
        } else {
            upgrade = Some(v);
        }
    }
    assert_eq!(upgrade.unwrap()["transport"], "websocket");
    a.wait_members("Chat", 2).await;
    subscribe_all_jobs(&mut upgrader).await;
    notify(&b, "Jobs", "/jobs", json!({"id": 2})).await;
    assert_eq!(
        event(&mut upgrader, "/jobs").await["args"],
        json!([{"id": 2}])
    );
    assert_eq!(
        event(&mut poller, "/jobs").await["args"],
        json!([{"id": 2}])
    );

    // Leaving ends the memberships of both.
    for script in [&mut poller, &mut upgrader] {
        script.send_line(r#"{"disconnect":true}"#).await;
        script.wait_event("disconnect", patience(30)).await;
    }
    b.wait_members("Chat", 0).await;
    b.wait_members("Jobs", 0).await;
}

#[tokio::test]
async fn polling_through_a_round_robin_balancer_without_sticky_sessions() {
    let redis = Redis::start().await;
    let (a, b) = two_nodes(&redis, &[]).await;
    let mut balancer = Script::spawn(
        "socketio_round_robin.js",
        &[&a.port.to_string(), &b.port.to_string()],
    );
    let listening = balancer.wait_event("listening", patience(30)).await;
    let port = listening["port"].as_u64().expect("port") as u16;

    let mut poller = client_at(port, json!({"transports": ["polling"]}));
    let hello = poller.wait_event("connect", patience(60)).await;
    assert_eq!(hello["transport"], "polling");
    a.wait_members("Chat", 1).await;
    subscribe_all_jobs(&mut poller).await;
    for n in 0..5 {
        let from = if n % 2 == 0 { &a } else { &b };
        notify(from, "Jobs", "/jobs", json!({"n": n})).await;
        assert_eq!(event(&mut poller, "/jobs").await["args"], json!([{"n": n}]));
    }
    // Both nodes took requests of the one session.
    balancer.send_line(r#"{"stats":true}"#).await;
    let stats = balancer.wait_event("stats", patience(30)).await;
    let counts: Vec<u64> = stats["requests"]
        .as_array()
        .expect("counts")
        .iter()
        .map(|c| c.as_u64().unwrap_or(0))
        .collect();
    assert!(counts.iter().all(|&c| c >= 3), "{stats}");
    poller.send_line(r#"{"disconnect":true}"#).await;
    poller.wait_event("disconnect", patience(30)).await;
    a.wait_members("Chat", 0).await;
}

/// The official 2.x client (Engine.IO 3, Socket.IO v4) on `node`,
/// reporting the events named.
fn client_v2(node: &Node, options: Value) -> Script {
    let url = format!("http://127.0.0.1:{}/", node.port);
    Script::spawn("socketio_client.js", &[&url, "2", &options.to_string()])
}

/// Emit with an ack callback (2.x has no ack timeouts: the test's deadline
/// is the bound).
async fn emit_ack_v2(script: &mut Script, name: &str, args: Value) -> Value {
    let line = json!({"emit": name, "args": args, "ack": true});
    script.send_line(&line.to_string()).await;
    let ack = script
        .wait_for("an ack", patience(30), |v| v["event"] == "ack")
        .await;
    ack["args"].clone()
}

#[tokio::test]
async fn socketio_client_2_over_websocket_and_polling_with_client_pings() {
    let redis = Redis::start().await;
    let (a, b) = two_nodes(&redis, &[]).await;
    let token = hs256(SECRET, "flamenco-web", 600);
    let events = json!(["/message", "/jobs"]);

    // WebSocket only, as Flamenco's web app connects; the token in the query.
    let mut web = client_v2(&a, json!({"events": events, "query": {"token": token}}));
    web.wait_event("connect", patience(60)).await;
    a.wait_members("Chat", 1).await;
    let sub = |kind: &str| json!([{"op": "subscribe", "type": kind}]);
    assert_eq!(
        emit_ack_v2(&mut web, "/subscription", sub("allJobs")).await,
        json!(["ok"])
    );
    assert_eq!(
        emit_ack_v2(&mut web, "/subscription", sub("everything")).await,
        json!(["unknown subscription type, ignoring request"])
    );
    // Long-polling, with the upgrade, on the other node.
    let mut poller = client_v2(
        &b,
        json!({"events": events, "transports": ["polling", "websocket"]}),
    );
    poller.wait_event("connect", patience(60)).await;
    a.wait_members("Chat", 2).await;
    assert_eq!(
        emit_ack_v2(&mut poller, "/subscription", sub("allJobs")).await,
        json!(["ok"])
    );
    a.wait_members("Jobs", 2).await;
    notify(&b, "Jobs", "/jobs", json!({"id": 7})).await;
    for script in [&mut web, &mut poller] {
        assert_eq!(event(script, "/jobs").await["args"], json!([{"id": 7}]));
    }
    // 2.x clients ping (every second here); a server that did not answer
    // or heed them would drop them after interval + timeout (3 s).
    tokio::time::sleep(std::time::Duration::from_millis(3500)).await;
    notify(&a, "Chat", "/message", json!({"text": "still here"})).await;
    for script in [&mut web, &mut poller] {
        assert_eq!(
            event(script, "/message").await["args"],
            json!([{"text": "still here"}])
        );
    }

    // A bad token: the ERROR packet for `/`.
    let mut forged = client_v2(&a, json!({"query": {"token": hs256("wrong", "eve", 600)}}));
    let refused = forged.wait_event("error", patience(60)).await;
    assert_eq!(refused["message"], "the token is not valid");

    for script in [&mut web, &mut poller] {
        script.send_line(r#"{"disconnect":true}"#).await;
    }
    a.wait_members("Chat", 0).await;
    a.wait_members("Jobs", 0).await;
}

/// A backend for client events: Flamenco's `/chat`, and events that echo,
/// join or leave a room, time out or fail. Records the Authorization header of each
/// call.
async fn event_backend() -> (String, std::sync::Arc<tokio::sync::Mutex<Vec<Value>>>) {
    use axum::routing::post;
    use axum::{extract::State, http::HeaderMap, Json, Router};
    type Seen = std::sync::Arc<tokio::sync::Mutex<Vec<Value>>>;
    async fn handle(
        State(seen): State<Seen>,
        headers: HeaderMap,
        Json(call): Json<Value>,
    ) -> axum::response::Response {
        use axum::response::IntoResponse;
        let auth = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        seen.lock()
            .await
            .push(json!({"call": call.clone(), "authorization": auth}));
        match call["event"].as_str().unwrap_or_default() {
            "/chat" => Json(json!({
                "ack": ["message sent successfully."],
                "broadcast": [{"room": "Chat", "event": "/message", "data": call["args"][0]}],
            }))
            .into_response(),
            "echo" => Json(json!({
                "ack": [{"rooms": call["rooms"]}],
                "emit": [{"event": "echoed", "args": call["args"]}],
            }))
            .into_response(),
            "vip" => Json(json!({"join": ["vip"], "ack": ["in"]})).into_response(),
            "unvip" => Json(json!({"leave": ["vip"], "ack": ["out"]})).into_response(),
            "bytes" => Json(json!({"ack": [{"$binary": "aGk="}, "as bytes"]})).into_response(),
            "slow" => {
                tokio::time::sleep(std::time::Duration::from_secs(5)).await;
                Json(json!({})).into_response()
            }
            _ => (axum::http::StatusCode::INTERNAL_SERVER_ERROR, "boom").into_response(),
        }
    }
    let seen: Seen = Default::default();
    let app = Router::new()
        .route("/events", post(handle))
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/events", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, seen)
}

/// Emit with an ack; the ack's and the event `name`'s arguments, which may
/// come in either order.
async fn ack_and_event(script: &mut Script, emit: &str, args: Value, name: &str) -> (Value, Value) {
    let line = json!({"emit": emit, "args": args, "ack": true, "timeout": 20000});
    script.send_line(&line.to_string()).await;
    let (mut ack, mut event) = (None, None);
    while ack.is_none() || event.is_none() {
        let v = script
            .wait_for("the ack and the event", patience(30), |v| {
                v["event"] == "ack" || (v["event"] == "event" && v["name"] == name)
            })
            .await;
        if v["event"] == "ack" {
            ack = Some(v["args"].clone());
        } else {
            event = Some(v["args"].clone());
        }
    }
    (ack.unwrap(), event.unwrap())
}

#[tokio::test]
async fn client_events_go_to_the_backend_and_its_answer_is_the_ack() {
    let redis = Redis::start().await;
    let (url, seen) = event_backend().await;
    let (a, b) = two_nodes(
        &redis,
        &[
            "--socketio-backend-url",
            &url,
            "--socketio-backend-timeout-ms",
            "500",
        ],
    )
    .await;
    let token = hs256(SECRET, "ton", 600);
    let mut chatter = client(&a, "/", json!({"auth": {"token": token}}));
    chatter.wait_event("connect", patience(60)).await;
    let mut other = client(&b, "/", json!({}));
    other.wait_event("connect", patience(60)).await;
    a.wait_members("Chat", 2).await;

    // Flamenco's /chat: a /message to Chat on every node, and its ack.
    // (The sender gets the broadcast and the ack in either order.)
    let chat = json!([{"name": "ton", "text": "render done?"}]);
    let (ack, message) = ack_and_event(&mut chatter, "/chat", chat.clone(), "/message").await;
    assert_eq!(ack, json!(["message sent successfully."]));
    assert_eq!(message, chat);
    assert_eq!(event(&mut other, "/message").await["args"], chat);
    let calls = seen.lock().await.clone();
    assert_eq!(calls[0]["call"]["event"], "/chat");
    assert_eq!(calls[0]["call"]["namespace"], "/");
    assert_eq!(calls[0]["call"]["user_id"], "ton");
    assert_eq!(calls[0]["call"]["rooms"], json!(["Chat"]));
    assert_eq!(calls[0]["call"]["ack"], true);
    assert_eq!(calls[0]["authorization"], format!("Bearer {token}"));

    // Emits to the sender, joins.
    let (ack, echoed) = ack_and_event(&mut other, "echo", json!([1, "two"]), "echoed").await;
    assert_eq!(ack, json!([{"rooms": ["Chat"]}]));
    assert_eq!(echoed, json!([1, "two"]));
    // A binary event: the backend gets each attachment as {"base64": …}.
    let (_, echoed) = ack_and_event(
        &mut other,
        "echo",
        json!([{"base64": "aGk="}, {"n": 1}]),
        "echoed",
    )
    .await;
    assert_eq!(echoed, json!([{"base64": "aGk="}, {"n": 1}]));
    let calls = seen.lock().await.clone();
    assert_eq!(calls.last().unwrap()["call"]["args"], echoed);
    assert_eq!(emit_ack(&mut other, "vip", json!([])).await, json!(["in"]));
    a.wait_members("vip", 1).await;
    assert_eq!(
        emit_ack(&mut other, "unvip", json!([])).await,
        json!(["out"])
    );
    a.wait_members("vip", 0).await;
    // Bytes in the ack: a BINARY_ACK, a Buffer in the client's callback.
    assert_eq!(
        emit_ack(&mut other, "bytes", json!([])).await,
        json!([{"base64": "aGk="}, "as bytes"])
    );

    // Timeouts and errors are error acks, never a hang.
    let ack = emit_ack(&mut chatter, "slow", json!([])).await;
    assert_eq!(ack[0]["error"], "backend_timeout", "{ack}");
    let ack = emit_ack(&mut chatter, "broken", json!([])).await;
    assert_eq!(ack[0]["error"], "backend_error", "{ack}");
    // The socket still works.
    let (ack, _) = ack_and_event(&mut chatter, "echo", json!([]), "echoed").await;
    assert_eq!(ack, json!([{"rooms": ["Chat"]}]));
}
