mod common;
use common::*;
#[tokio::test]
async fn dump() {
    let env = TestEnv::start().await;
    for p in ["/admin/api/openapi.json", "/api/openapi.json"] {
        let (s, t) = env.get_text(p, None).await;
        println!("==== {p} {s}\n{t}");
    }
    env.shutdown().await;
}
