// The human's page. Everything from the mesh goes into the document as text
// (textContent, createElement), never as markup: message texts are untrusted.
"use strict";

const page = {
  csrf: null,
  me: null,
  nodeName: null,
  target: "",        // "" (everything), an agent address or "#topic"
  older: null,       // cursor of the messages before the first shown
  shown: new Map(),  // message id -> its <li>
  replyTo: null,
  events: null,
  pairing: null,
  outgoing: new Map(), // pairings this page asked for, by PeerId
  asking: new Set(), // PeerIds of the nodes asking this one to admit them     // the node this page asked to admit it (PeerId)
};

const $ = (id) => document.getElementById(id);

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined && text !== null) e.textContent = String(text);
  return e;
}

function time(ms) {
  return ms ? new Date(ms).toLocaleString() : "";
}

async function api(path, body) {
  const init = { credentials: "same-origin", headers: {} };
  if (body !== undefined) {
    init.method = "POST";
    init.headers["content-type"] = "application/json";
    if (page.csrf) init.headers["x-mesh-csrf"] = page.csrf;
    init.body = JSON.stringify(body);
  }
  const r = await fetch(path, init);
  let data = null;
  try { data = await r.json(); } catch (_) { data = null; }
  if (!r.ok) {
    const err = new Error((data && data.error) || r.statusText);
    err.status = r.status;
    throw err;
  }
  return data;
}

// ---- state: agents, topics, nodes ----

function reception(r) {
  return { Push: "pushed at once", Woken: "woken by its hook", Poll: "reads at its next turn", Offline: "offline, mail waits" }[r] || r;
}

function renderAgents(agents) {
  const box = $("agents");
  box.replaceChildren();
  const byNode = new Map();
  for (const a of agents) {
    const key = a.node_name;
    if (!byNode.has(key)) byNode.set(key, []);
    byNode.get(key).push(a);
  }
  for (const [node, list] of byNode) {
    const div = el("div", "node");
    div.append(el("div", "node-name", node));
    for (const a of list) {
      const b = el("button", "agent");
      b.type = "button";
      b.dataset.target = a.address;
      b.dataset.agent = a.address;
      const dot = el("span", "dot" + (a.reception !== "Offline" ? " on" : ""));
      b.append(dot, el("span", "agent-name", a.address));
      const meta = [a.kind, reception(a.reception)];
      if (a.repo) meta.push(a.repo);
      b.append(el("div", "meta", meta.join(" · ")));
      if (a.summary) b.append(el("div", "meta summary", a.summary));
      b.addEventListener("click", () => openConversation(a.address));
      div.append(b);
    }
    box.append(div);
  }
}

function renderTopics(topics) {
  const ul = $("topics");
  ul.replaceChildren();
  for (const t of topics) {
    const li = el("li");
    const b = el("button", "topic", "#" + t.topic);
    b.type = "button";
    b.dataset.target = "#" + t.topic;
    b.addEventListener("click", () => openConversation("#" + t.topic));
    li.append(b, el("span", "meta", ` ${t.messages} messages`));
    ul.append(li);
  }
}

function path(c) {
  if (!c) return "not connected";
  if (c.path === "Relayed") return "relayed" + (c.via ? " via " + c.via.slice(-8) : "");
  return c.path === "Lan" ? "LAN" : "direct";
}

function renderNodes(peers) {
  const ul = $("nodes");
  ul.replaceChildren();
  for (const p of peers) {
    const li = el("li", "peer");
    li.dataset.peer = p.peer_id;
    const dot = el("span", "dot" + (p.connected ? " on" : ""));
    const name = p.name || p.peer_id.slice(-8);
    li.append(dot, el("span", "peer-name", name));
    const conn = p.connections && p.connections[0];
    const what = p.member ? (p.connected ? path(conn) : (p.online ? "online, not connected" : "offline")) : "nearby, not a member" + (p.refused ? ": " + p.refused : "");
    li.append(el("div", "meta", what));
    const mine = page.outgoing.get(p.peer_id);
    if (!p.member && mine && (mine.state === "Waiting" || mine.state === "Approved")) {
      li.append(mine.confirmed ? el("div", "meta", `waiting for ${mine.name} to admit this node…`) : confirmBox(mine));
    } else if (!p.member && !page.asking.has(p.peer_id)) {
      const b = el("button", "ask-join", "Ask to join its mesh");
      b.type = "button";
      b.addEventListener("click", async () => {
        b.disabled = true;
        try {
          const v = await api("/api/pair", { node: p.peer_id });
          page.pairing = v.peer;
          page.outgoing.set(v.peer, v);
          status(`comparison code ${v.code}: its user approves on ${v.name} (mesh approve ${v.code.replace(" ", "")} or its page)`);
          b.replaceWith(confirmBox(v));
        } catch (e) {
          b.disabled = false;
          status("not asked: " + e.message);
        }
      });
      li.append(b);
    }
    ul.append(li);
  }
}

function renderPermissions(list) {
  const ul = $("permission-list");
  ul.replaceChildren();
  for (const p of list) {
    const li = el("li", "permission");
    li.dataset.id = p.id;
    const head = el("div", "msg-head");
    head.append(el("span", "msg-from", p.agent), el("span", "perm-tool", p.tool), el("span", "msg-time", time(p.asked_ms)));
    li.append(head, el("p", "msg-text", p.description), el("pre", "perm-input", p.input_preview));
    li.append(el("div", "untrusted", "untrusted text, from the session's client"));
    answerButtons(li, ["Allow", "Deny"], "/api/permission", p.agent + ":" + p.id, "permissions");
    ul.append(li);
  }
  $("permissions").hidden = list.length === 0;
}

// The two answers of a listed request (yes first): posted to `path` as {id, allow}; the
// request leaves its list (and an empty list its section) once answered.
function answerButtons(li, [yes, no], path, id, section) {
  for (const [label, allow] of [[yes, true], [no, false]]) {
    const b = el("button", allow ? "allow" : "deny", label);
    b.type = "button";
    b.addEventListener("click", async () => {
      try {
        await api(path, { id, allow });
        const list = li.parentElement;
        li.remove();
        $(section).hidden = !(list && list.children.length);
      } catch (e) {
        status("not answered: " + e.message);
        reloadSoon("state");
      }
    });
    li.append(b);
  }
}

function renderPairings(list) {
  const ul = $("pairing-list");
  ul.replaceChildren();
  for (const p of list) {
    const li = el("li", "pairing");
    li.dataset.code = p.code;
    li.append(el("span", "pair-code", p.code), el("span", "msg-from", p.name), el("span", "meta", " " + p.peer.slice(-8) + " · " + time(p.asked_ms)));
    answerButtons(li, ["Admit", "Refuse"], "/api/pairing", p.code, "pairings");
    ul.append(li);
  }
  $("pairings").hidden = list.length === 0;
}

// Asking side: the code, and the user's comparison (joining leaves this node's mesh).
function confirmBox(v) {
  const box = el("div", "pair-confirm");
  box.append(el("span", "pair-code", v.code), el("div", "meta", `Does ${v.name} show the same code? Joining leaves this node's mesh.`));
  for (const [label, same] of [["Same code: join", true], ["Different: give up", false]]) {
    const b = el("button", same ? "allow" : "deny", label);
    b.type = "button";
    b.addEventListener("click", async () => {
      try {
        const now = await api("/api/pair/confirm", { node: v.peer, same });
        if (same) page.outgoing.set(v.peer, now);
        else page.outgoing.delete(v.peer);
        box.replaceWith(el("div", "meta", same ? `waiting for ${v.name} to admit this node…` : "given up"));
      } catch (e) {
        status("not confirmed: " + e.message);
      }
    });
    box.append(b);
  }
  return box;
}

function pairingEvent(v) {
  if (!v.asking) return;
  const known = page.outgoing.get(v.peer);
  // An older pairing with that node (given up when this one started) says nothing now.
  if (known && known.asked_ms > v.asked_ms) return;
  const same = known && known.code === v.code;
  page.outgoing.set(v.peer, same ? { ...v, confirmed: known.confirmed || v.confirmed } : v);
  if (v.peer !== page.pairing) return;
  const st = v.state;
  if (st === "Joined") status(`joined the mesh of ${v.name}`);
  else if (st === "Approved") status(v.confirmed || (same && known.confirmed) ? `${v.name} admitted this node; joining…` : `${v.name} admitted this node: confirm the code to join`);
  else if (st && st.Refused !== undefined) status(`not admitted: ${st.Refused}`);
}

async function loadState() {
  const s = await api("/api/state");
  page.csrf = s.csrf;
  page.me = s.me;
  page.nodeName = s.node.name;
  $("whoami").textContent = `${s.me}@${s.node.name}`;
  renderAgents(s.agents);
  renderTopics(s.topics);
  page.asking = new Set(s.pairings.map((p) => p.peer));
  page.outgoing = new Map(s.outgoing.map((p) => [p.peer, p]));
  renderNodes(s.peers);
  renderPermissions(s.permissions);
  renderPairings(s.pairings);
}

// ---- conversation ----

function stateText(h) {
  if (!h.state) return null;
  if (h.read_at_ms) return `read ${time(h.read_at_ms)}`;
  return h.state;
}

function setState(li, text) {
  const s = li.querySelector(".state");
  if (!s || !text) return;
  s.textContent = text;
  s.className = "state " + text.split(/[ :]/)[0];
}

function messageItem(h) {
  const li = el("li", "msg" + (h.kind === "out" ? " out" : ""));
  li.dataset.id = h.id;
  const head = el("div", "msg-head");
  head.append(el("span", "msg-from", h.from), el("span", "msg-to", "→ " + h.to), el("span", "msg-time", time(h.at_ms)));
  if (h.kind !== "out") head.append(el("span", "untrusted", "untrusted text, sender verified"));
  const state = el("span", "state");
  head.append(state);
  const reply = el("button", "reply", "reply");
  reply.type = "button";
  reply.addEventListener("click", () => startReply(h));
  head.append(reply);
  li.append(head);
  if (h.reply_to && !page.shown.has(h.reply_to)) {
    li.append(el("div", "meta", "in reply to " + h.reply_to));
  }
  li.append(el("p", "msg-text", h.text));
  li.append(el("ol", "replies"));
  setState(li, stateText(h));
  return li;
}

// A message that arrived (Event::Message), as a history row.
function arrived(m) {
  return {
    id: m.id,
    kind: m.topic ? "topic" : "in",
    from: m.from,
    to: m.topic ? "#" + m.topic : `${m.agent}@${page.nodeName}`,
    text: m.text,
    at_ms: m.received_at_ms,
    reply_to: m.reply_to,
    state: null,
    read_at_ms: null,
  };
}

// Whether an arrived message is part of the conversation shown.
function belongs(m) {
  if (!page.target) return true;
  if (page.target.startsWith("#")) return m.topic === page.target.slice(1);
  return !m.topic && m.from === page.target;
}

function place(h) {
  if (page.shown.has(h.id)) {
    setState(page.shown.get(h.id), stateText(h));
    return;
  }
  const li = messageItem(h);
  page.shown.set(h.id, li);
  const parent = h.reply_to && page.shown.get(h.reply_to);
  if (parent) parent.querySelector(".replies").append(li);
  else $("messages").append(li);
}

async function openConversation(target) {
  page.target = target;
  page.shown.clear();
  page.older = null;
  $("messages").replaceChildren();
  $("conv-title").textContent = target || "Everything";
  if (target) $("to").value = target;
  await loadConversation();
}

async function loadConversation() {
  const q = new URLSearchParams({ limit: "50" });
  if (page.target) q.set("target", page.target);
  const h = await api("/api/history?" + q);
  for (const row of h.entries) place(row);
  page.older = h.older;
  $("older").hidden = !page.older;
  const box = $("messages");
  box.scrollTop = box.scrollHeight;
}

async function loadOlder() {
  if (!page.older) return;
  const q = new URLSearchParams({ limit: "50", before: page.older });
  if (page.target) q.set("target", page.target);
  const h = await api("/api/history?" + q);
  // Older rows go first: rebuild with them ahead of what is shown.
  const current = [...$("messages").children];
  $("messages").replaceChildren();
  const keep = new Map(page.shown);
  page.shown.clear();
  for (const row of h.entries) place(row);
  for (const li of current) { $("messages").append(li); }
  for (const [id, li] of keep) page.shown.set(id, li);
  page.older = h.older;
  $("older").hidden = !page.older;
}

// One pending reload of each kind: a burst of events costs one reload.
const reloadTimers = { state: null, conversation: null };
function reloadSoon(what) {
  clearTimeout(reloadTimers[what]);
  reloadTimers[what] = setTimeout(async () => {
    try {
      if (what === "state") await loadState();
      else await loadConversation();
    } catch (e) { status(e.message); }
  }, 200);
}

// ---- live events ----

function onEvent(ev) {
  const [kind, body] = typeof ev === "string" ? [ev, null] : Object.entries(ev)[0];
  switch (kind) {
    case "Message":
      // A new row: appended to the conversation shown, if it belongs there.
      if (belongs(body)) {
        const box = $("messages");
        const atEnd = box.scrollHeight - box.scrollTop - box.clientHeight < 40;
        place(arrived(body));
        if (atEnd) box.scrollTop = box.scrollHeight;
      }
      break;
    case "Delivered":
    case "DeadLetter":
      if (page.shown.has(body.id)) {
        setState(page.shown.get(body.id), kind === "Delivered" ? "delivered" : "dead: " + body.reason);
      } else {
        reloadSoon("conversation");
      }
      break;
    case "Read":
      if (page.shown.has(body.id)) setState(page.shown.get(body.id), `read ${time(body.at_ms)}`);
      else reloadSoon("conversation");
      break;
    case "Pairing":
      pairingEvent(body);
      reloadSoon("state");
      break;
    case "Permission":
    case "PeerUp":
    case "PeerDown":
    case "NodeUpdated":
    case "NetworkChanged":
      reloadSoon("state");
      break;
    case "Lagged":
      reloadSoon("state");
      reloadSoon("conversation");
      break;
    default:
      break;
  }
}

function listen() {
  const es = new EventSource("/api/events");
  page.events = es;
  es.onopen = () => { $("conn").textContent = "live"; $("conn").className = "conn live"; };
  es.onerror = () => { $("conn").textContent = "reconnecting…"; $("conn").className = "conn down"; };
  es.onmessage = (m) => {
    try { onEvent(JSON.parse(m.data)); } catch (e) { console.error(e); }
  };
}

// ---- compose ----

function status(text) {
  $("compose-status").textContent = text || "";
}

function startReply(h) {
  page.replyTo = h.id;
  $("reply-id").textContent = h.id;
  $("replying").hidden = false;
  if (h.kind === "topic") $("to").value = h.to;
  else if (h.kind === "out") $("to").value = h.to;
  else $("to").value = h.from;
  $("text").focus();
}

function cancelReply() {
  page.replyTo = null;
  $("replying").hidden = true;
}

async function submit(ev) {
  ev.preventDefault();
  const to = $("to").value.trim();
  const text = $("text").value;
  if (!to || !text.trim()) { status("Write a recipient (agent@node or #topic) and a text."); return; }
  $("send").disabled = true;
  try {
    if (to.startsWith("#")) {
      const r = await api("/api/publish", { topic: to.slice(1), text, reply_to: page.replyTo });
      status(`published to #${r.topic}: reached ${r.peers_reached} nodes, ${r.local_subscribers} local subscribers`);
    } else {
      const r = await api("/api/send", { to, text, reply_to: page.replyTo });
      const st = r.status.Queued ? "queued: " + r.status.Queued.reason : (r.status === "Delivered" ? "delivered" : JSON.stringify(r.status));
      status(`sent to ${r.to}: ${st}`);
    }
    $("text").value = "";
    cancelReply();
    reloadSoon("conversation");
  } catch (e) {
    status("not sent: " + e.message);
  } finally {
    $("send").disabled = false;
  }
}

async function makeInvite() {
  try {
    const r = await api("/api/invite", {});
    $("invite-code").textContent = r.code;
    $("invite-box").hidden = false;
  } catch (e) {
    status("no invite: " + e.message);
  }
}

// ---- start ----

async function start() {
  // A login link opened in a tab that already shows the page changes only the fragment:
  // start over with it.
  window.addEventListener("hashchange", () => {
    if (location.hash.includes("login=")) location.reload();
  });
  $("compose").addEventListener("submit", submit);
  $("cancel-reply").addEventListener("click", cancelReply);
  $("older").addEventListener("click", loadOlder);
  $("invite").addEventListener("click", makeInvite);
  for (const b of document.querySelectorAll(".view")) {
    b.addEventListener("click", () => openConversation(b.dataset.target));
  }
  const login = new URLSearchParams(location.hash.slice(1)).get("login");
  if (login) {
    // The token leaves the address bar (and history) before anything else happens.
    history.replaceState(null, "", location.pathname);
    try {
      const r = await api("/api/login", { token: login });
      page.csrf = r.csrf;
    } catch (e) {
      $("login-needed").hidden = false;
      $("login-needed").prepend(el("p", "meta", e.message));
      return;
    }
  }
  try {
    await loadState();
  } catch (e) {
    if (e.status === 401) { $("login-needed").hidden = false; return; }
    throw e;
  }
  $("app").hidden = false;
  listen();
  await openConversation("");
  // The mesh is on screen: agents, nodes, topics and the newest conversation page
  // (the benchmark reads this mark).
  performance.mark("mesh-ready");
}

start();
