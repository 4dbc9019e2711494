//! Permission requests of agent sessions (Claude Code's `claude/channel/permission`): asked
//! by a session's adapter, listed on the page and by `mesh permissions`, answered once
//! (the first answer wins) from the page or `mesh approve` / `mesh deny`, and the answer
//! handed back to the asking session as an event.
//!
//! Kept in memory: a request lives as long as its session waits for it, at most
//! [`PERMISSION_TTL`] (a prompt answered in the terminal is never reported back by Claude
//! Code, so one that nobody answers here expires). [`Permissions`] is the plain record,
//! fed the time; the node applies it.

use std::collections::BTreeMap;
use std::time::Duration;

use super::Node;
use crate::api::{Event, PermissionAsk, PermissionView};
use crate::error::ServiceError;
use crate::ids::{AgentName, now_ms};

/// How long a request waits for an answer here.
pub const PERMISSION_TTL: Duration = Duration::from_secs(30 * 60);
/// Requests waiting at most (the oldest expires first).
pub const MAX_PERMISSIONS: usize = 64;
/// Longest tool name, description and input preview kept (characters).
pub const MAX_TOOL_CHARS: usize = 128;
/// See [`MAX_TOOL_CHARS`].
pub const MAX_TEXT_CHARS: usize = 2000;

fn cut(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

/// The requests this node knows, by `agent:request_id`.
#[derive(Debug, Default)]
pub struct Permissions {
    by_key: BTreeMap<(String, String), PermissionView>,
}

impl Permissions {
    /// A new request from `agent`'s session (asked again: the same request, unchanged).
    pub fn ask(&mut self, agent: &AgentName, ask: &PermissionAsk, now_ms: u64) -> Result<PermissionView, ServiceError> {
        let id = ask.request_id.trim();
        if id.is_empty() || id.len() > 16 || !id.chars().all(|c| c.is_ascii_lowercase()) {
            return Err(ServiceError::invalid(format!(
                "a permission request id is 1 to 16 lowercase letters, not {id:?}"
            )));
        }
        self.expire(now_ms);
        let key = (agent.to_string(), id.to_string());
        if let Some(p) = self.by_key.get(&key) {
            return Ok(p.clone());
        }
        while self.by_key.len() >= MAX_PERMISSIONS {
            let oldest = self
                .by_key
                .iter()
                .min_by_key(|(_, p)| p.asked_ms)
                .map(|(k, _)| k.clone());
            match oldest {
                Some(k) => self.by_key.remove(&k),
                None => break,
            };
        }
        let view = PermissionView {
            id: id.to_string(),
            agent: agent.to_string(),
            tool: cut(&ask.tool_name, MAX_TOOL_CHARS),
            description: cut(&ask.description, MAX_TEXT_CHARS),
            input_preview: cut(&ask.input_preview, MAX_TEXT_CHARS),
            asked_ms: now_ms,
            answer: None,
        };
        self.by_key.insert(key, view.clone());
        Ok(view)
    }

    /// The requests still waiting, oldest first.
    pub fn pending(&mut self, now_ms: u64) -> Vec<PermissionView> {
        self.expire(now_ms);
        let mut list: Vec<PermissionView> = self.by_key.values().filter(|p| p.answer.is_none()).cloned().collect();
        list.sort_by_key(|p| p.asked_ms);
        list
    }

    /// Answers the request `id` (a request id, or `agent:id` when several agents have one of
    /// that id): the first answer wins; a later one is refused saying what the first was.
    pub fn answer(&mut self, id: &str, allow: bool, by: &str, now_ms: u64) -> Result<PermissionView, ServiceError> {
        self.expire(now_ms);
        let (agent, rid) = match id.split_once(':') {
            Some((a, r)) => (Some(a), r),
            None => (None, id),
        };
        let keys: Vec<(String, String)> = self
            .by_key
            .keys()
            .filter(|(a, r)| r == rid && agent.is_none_or(|x| x == a))
            .cloned()
            .collect();
        let key = match keys.as_slice() {
            [] => {
                return Err(ServiceError::not_found(format!(
                    "no permission request {id:?} is waiting here (answered in the session itself, or expired); see mesh permissions"
                )));
            }
            [k] => k.clone(),
            many => {
                let names: Vec<String> = many.iter().map(|(a, r)| format!("{a}:{r}")).collect();
                return Err(ServiceError::ambiguous(format!(
                    "several agents have a request {id:?}: answer one of {}",
                    names.join(", ")
                )));
            }
        };
        let Some(p) = self.by_key.get_mut(&key) else {
            return Err(ServiceError::not_found(format!("no permission request {id:?}")));
        };
        if let Some(a) = &p.answer {
            return Err(ServiceError::invalid(format!(
                "permission request {id} was already {} by {}",
                if a.allow { "allowed" } else { "denied" },
                a.by
            )));
        }
        p.answer = Some(crate::api::PermissionAnswer {
            allow,
            by: cut(by, MAX_TOOL_CHARS),
            at_ms: now_ms,
        });
        Ok(p.clone())
    }

    fn expire(&mut self, now_ms: u64) {
        let ttl = PERMISSION_TTL.as_millis() as u64;
        self.by_key.retain(|_, p| p.asked_ms.saturating_add(ttl) > now_ms);
    }
}

impl Node {
    fn permissions_lock(&self) -> std::sync::MutexGuard<'_, Permissions> {
        self.0.permissions.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A session of local agent `agent` asks for permission: listed until answered, told to
    /// watchers (`Event::Permission`).
    pub async fn ask_permission(&self, agent: &str, ask: PermissionAsk) -> Result<PermissionView, ServiceError> {
        let agent = AgentName::new(agent)?;
        if !self.local_agent_names().await?.contains(&agent) {
            return Err(ServiceError::not_found(format!("no agent {agent:?} on this node")));
        }
        let view = self.permissions_lock().ask(&agent, &ask, now_ms())?;
        tracing::info!(agent = %agent, id = %view.id, tool = %view.tool, "a session asks for permission");
        self.emit(Event::Permission(view.clone()));
        Ok(view)
    }

    /// The permission requests waiting here.
    pub fn permissions(&self) -> Vec<PermissionView> {
        self.permissions_lock().pending(now_ms())
    }

    /// Answers a permission request (the first answer wins); the asking session hears it
    /// through `Event::Permission`.
    pub fn answer_permission(&self, id: &str, allow: bool, by: &str) -> Result<PermissionView, ServiceError> {
        let view = self.permissions_lock().answer(id.trim(), allow, by, now_ms())?;
        tracing::info!(agent = %view.agent, id = %view.id, allow, by, "a permission request was answered");
        self.emit(Event::Permission(view.clone()));
        Ok(view)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn ask(id: &str) -> PermissionAsk {
        PermissionAsk {
            request_id: id.into(),
            tool_name: "Bash".into(),
            description: "Run the tests".into(),
            input_preview: "{\"command\":\"cargo test\"}".into(),
        }
    }

    #[test]
    fn the_first_answer_wins_and_a_later_one_says_what_it_was() {
        let mut p = Permissions::default();
        let alice = AgentName::new("alice").unwrap();
        let v = p.ask(&alice, &ask("tbxkq"), 10).unwrap();
        assert_eq!(
            (v.id.as_str(), v.agent.as_str(), v.tool.as_str()),
            ("tbxkq", "alice", "Bash")
        );
        assert_eq!(
            p.ask(&alice, &ask("tbxkq"), 11).unwrap().asked_ms,
            10,
            "asked again: the same"
        );
        assert_eq!(p.pending(12).len(), 1);
        let answered = p.answer("tbxkq", true, "tester (page)", 20).unwrap();
        assert!(answered.answer.as_ref().unwrap().allow);
        let late = p.answer("tbxkq", false, "tester (cli)", 21).unwrap_err().to_string();
        assert!(late.contains("already allowed by tester (page)"), "{late}");
        assert!(p.pending(22).is_empty());
        assert!(p.answer("zzzzz", true, "x", 22).is_err());
    }

    #[test]
    fn the_same_id_from_two_agents_is_answered_by_naming_the_agent() {
        let mut p = Permissions::default();
        let (a, b) = (AgentName::new("alice").unwrap(), AgentName::new("bob").unwrap());
        p.ask(&a, &ask("abcde"), 1).unwrap();
        p.ask(&b, &ask("abcde"), 2).unwrap();
        let e = p.answer("abcde", true, "t", 3).unwrap_err().to_string();
        assert!(e.contains("alice:abcde") && e.contains("bob:abcde"), "{e}");
        assert_eq!(p.answer("bob:abcde", false, "t", 3).unwrap().agent, "bob");
        assert_eq!(p.pending(4).len(), 1);
    }

    #[test]
    fn bad_ids_are_refused_and_old_or_excess_requests_go() {
        let mut p = Permissions::default();
        let a = AgentName::new("alice").unwrap();
        for bad in ["", "ABCDE", "ab cd", "a1", &"x".repeat(17)] {
            assert!(p.ask(&a, &ask(bad), 1).is_err(), "{bad:?}");
        }
        let long = PermissionAsk {
            description: "d".repeat(10_000),
            ..ask("longd")
        };
        assert_eq!(p.ask(&a, &long, 1).unwrap().description.chars().count(), MAX_TEXT_CHARS);
        let ttl = PERMISSION_TTL.as_millis() as u64;
        assert!(p.pending(1 + ttl).is_empty(), "expired");
        let ids: Vec<String> = (0..MAX_PERMISSIONS + 1)
            .map(|i| {
                let s: String = format!("{i:03}")
                    .chars()
                    .map(|c| (b'a' + (c as u8 - b'0')) as char)
                    .collect();
                s
            })
            .collect();
        for (i, id) in ids.iter().enumerate() {
            p.ask(&a, &ask(id), 10_000_000 + i as u64).unwrap();
        }
        let left = p.pending(10_000_000 + ids.len() as u64);
        assert_eq!(left.len(), MAX_PERMISSIONS);
        assert_eq!(left[0].id, ids[1], "the oldest went");
    }
}
