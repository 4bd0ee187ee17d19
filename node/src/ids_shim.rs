pub fn owner_node(client_id: &str) -> Option<&str> {
    let mut parts = client_id.splitn(3, ':');
    parts.next()?;
    parts.next()?;
    parts.next()
}
pub fn new_client_id(node: &str) -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    format!("{secs}:{}:{node}", uuid::Uuid::new_v4().simple())
}
