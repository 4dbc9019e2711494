//! Permission requests across the mesh (in one process, over 127.0.0.1): a node with
//! `[permissions] receive` lists the requests of the members whose `send_to` names it,
//! waiting ones included, and answers them; the asking node keeps the first answer and
//! tells the others; a node not named is sent nothing; only agents named in
//! `answer_agents` may answer.

#![allow(clippy::unwrap_used)]

mod common;

use common::{FAST_CONFIG, TestNode, eventually, wait_event};
use mesh_node::api::{Event, PermissionAsk, PermissionView, Request};

fn ask(id: &str, tool: &str) -> PermissionAsk {
    PermissionAsk {
        request_id: id.into(),
        tool_name: tool.into(),
        description: "Run the tests".into(),
        input_preview: "{\"command\":\"cargo test\"}".into(),
    }
}

async fn listed(node: &TestNode) -> Vec<PermissionView> {
    get!(node.call(Request::Permissions { agent: None }), Permissions)
}

async fn answer(node: &TestNode, id: &str, allow: bool, agent: Option<&str>) -> Result<PermissionView, String> {
    match node
        .call(Request::AnswerPermission {
            id: id.into(),
            allow,
            by: "user (test)".into(),
            agent: agent.map(Into::into),
        })
        .await
    {
        Ok(mesh_node::api::Response::Permission(p)) => Ok(p),
        Ok(other) => panic!("unexpected answer {other:?}"),
        Err(e) => Err(e.to_string()),
    }
}

async fn waiting_on(node: &TestNode, agent: &str, id: &str) -> PermissionView {
    eventually(&format!("{agent}:{id} listed on {}", node.name), || async {
        listed(node).await.into_iter().find(|p| p.agent == agent && p.id == id)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_reach_the_nodes_that_opted_in_and_the_first_answer_wins_at_the_asking_node() {
    let receiving = format!("{FAST_CONFIG}\n[permissions]\nreceive = true\nanswer_agents = [\"reviewer\"]\n");
    let a = TestNode::start_with(
        "alpha",
        &format!("{FAST_CONFIG}\n[permissions]\nsend_to = [\"beta\"]\n"),
    )
    .await;
    let b = TestNode::start_with("beta", &receiving).await;
    // Gamma would take them, but alpha does not send them there.
    let c = TestNode::start_with("gamma", &receiving).await;
    a.register("alice").await;
    let mut events = a.watch(&["alice"]).await;

    // Asked before the watching node connects: sent to it when it does.
    let early = get!(
        a.call(Request::AskPermission {
            agent: "alice".into(),
            ask: ask("early", "Bash"),
        }),
        Permission
    );
    assert_eq!(early.agent, "alice");
    a.dial(&b).await;
    a.dial(&c).await;
    let seen = waiting_on(&b, "alice@alpha", "early").await;
    assert_eq!(
        (seen.tool.as_str(), seen.input_preview.as_str()),
        ("Bash", "{\"command\":\"cargo test\"}")
    );

    // Asked while connected: at once. The node alpha does not name never lists either.
    get!(
        a.call(Request::AskPermission {
            agent: "alice".into(),
            ask: ask("later", "Write"),
        }),
        Permission
    );
    waiting_on(&b, "alice@alpha", "later").await;
    assert!(listed(&c).await.is_empty(), "alpha does not send them to gamma");

    // Answered on beta: the asking node takes it, naming beta; its session's watcher hears.
    let won = answer(&b, "alice@alpha:early", true, None).await.unwrap();
    assert!(won.answer.as_ref().unwrap().allow);
    let heard = wait_event(
        &mut events,
        "the answer from beta",
        |e| matches!(e, Event::Permission(p) if p.id == "early" && p.answer.is_some()),
    )
    .await;
    let Event::Permission(heard) = heard else {
        unreachable!()
    };
    let by = heard.answer.unwrap().by;
    assert_eq!(by, "user (test) on beta");
    // A later answer on the asking node loses, saying which came first.
    let late = answer(&a, "early", false, None).await.unwrap_err();
    assert!(late.contains("already allowed by user (test) on beta"), "{late}");

    // Answered on the asking node: beta stops listing it and its answer is refused.
    answer(&a, "later", false, None).await.unwrap();
    eventually("beta hears that later was settled", || async {
        (!listed(&b).await.iter().any(|p| p.id == "later")).then_some(())
    })
    .await;
    let lost = answer(&b, "alice@alpha:later", true, None).await.unwrap_err();
    assert!(lost.contains("already denied by user (test)"), "{lost}");

    // An agent named in beta's answer_agents may list and answer; another may not.
    get!(
        a.call(Request::AskPermission {
            agent: "alice".into(),
            ask: ask("third", "Edit"),
        }),
        Permission
    );
    let as_reviewer = eventually("the reviewer sees the third request", || async {
        let list = get!(
            b.call(Request::Permissions {
                agent: Some("reviewer".into())
            }),
            Permissions
        );
        list.into_iter().find(|p| p.id == "third")
    })
    .await;
    assert_eq!(as_reviewer.agent, "alice@alpha");
    let refused = b
        .call(Request::Permissions {
            agent: Some("mallory".into()),
        })
        .await
        .unwrap_err()
        .to_string();
    assert!(refused.contains("answer_agents"), "{refused}");
    let refused = answer(&b, "third", true, Some("mallory")).await.unwrap_err();
    assert!(refused.contains("may not answer"), "{refused}");
    answer(&b, "third", true, Some("reviewer")).await.unwrap();
    let heard = wait_event(
        &mut events,
        "the reviewer's answer",
        |e| matches!(e, Event::Permission(p) if p.id == "third" && p.answer.is_some()),
    )
    .await;
    let Event::Permission(heard) = heard else {
        unreachable!()
    };
    assert_eq!(heard.answer.unwrap().by, "reviewer (agent) on beta");
    assert!(listed(&c).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_to_a_node_that_is_gone_is_an_error_and_the_request_stays_listed() {
    let receiving = format!("{FAST_CONFIG}\n[permissions]\nreceive = true\n");
    let mut a = TestNode::start_with("alpha", &format!("{FAST_CONFIG}\n[permissions]\nsend_to = [\"*\"]\n")).await;
    let b = TestNode::start_with("beta", &receiving).await;
    a.register("alice").await;
    a.dial(&b).await;
    get!(
        a.call(Request::AskPermission {
            agent: "alice".into(),
            ask: ask("gone", "Bash"),
        }),
        Permission
    );
    waiting_on(&b, "alice@alpha", "gone").await;
    a.stop().await;
    let e = answer(&b, "gone", true, None).await.unwrap_err();
    assert!(e.contains("alpha"), "{e}");
    assert!(
        listed(&b).await.iter().any(|p| p.id == "gone" && p.answer.is_none()),
        "still waiting after a failed answer"
    );
}
