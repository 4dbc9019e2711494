// agentmesh for OpenCode: wakes the session with new agentmesh mail.
// Written by `mesh install opencode`; `mesh uninstall opencode` removes it.
//
// It runs `mesh hook opencode follow`, which waits for mail to this OpenCode's agent on the
// mesh (the agentmesh MCP server of this process) and prints each batch as one JSON line.
// The batch is injected into the session as a user message (which starts a turn when the
// session is idle); the follower marks it read only once OpenCode took it ("ok <batch>"),
// and offers it again after a pause otherwise ("no <batch>").
import { spawn } from "node:child_process"
import { createInterface } from "node:readline"

const MESH = __MESH_ARGV__
const RESTART_MIN_MS = 1000
const RESTART_MAX_MS = 60000

export const AgentMesh = async ({ client, directory }) => {
  // The session to wake: the top-level session that was active last.
  let session = null
  const subagents = new Set()
  let pause = RESTART_MIN_MS

  const follow = () => {
    let child
    try {
      child = spawn(MESH[0], [...MESH.slice(1), "hook", "opencode", "follow"], {
        cwd: directory,
        stdio: ["pipe", "pipe", "ignore"],
      })
    } catch {
      return
    }
    const started = Date.now()
    child.on("error", () => {})
    child.stdin.on("error", () => {})
    createInterface({ input: child.stdout }).on("line", async (line) => {
      let batch
      try {
        batch = JSON.parse(line)
      } catch {
        return
      }
      let shown = false
      if (session) {
        try {
          const res = await client.session.promptAsync({
            path: { id: session },
            body: { parts: [{ type: "text", text: batch.text }] },
          })
          shown = !res?.error
        } catch {
          shown = false
        }
      }
      child.stdin.write(`${shown ? "ok" : "no"} ${batch.batch}\n`)
    })
    child.on("exit", () => {
      // Ended (node stopped with `mesh down`, upgraded, ...): start again, slower each time
      // it ends quickly.
      pause = Date.now() - started > RESTART_MAX_MS ? RESTART_MIN_MS : Math.min(pause * 2, RESTART_MAX_MS)
      setTimeout(follow, pause).unref?.()
    })
  }
  follow()

  return {
    event: async ({ event }) => {
      const p = event?.properties ?? {}
      if (!p.sessionID || !String(event.type).startsWith("session.")) return
      // Subagent sessions have a parent; mail goes to the session the user works in.
      if (p.info?.parentID) subagents.add(p.sessionID)
      if (subagents.has(p.sessionID)) return
      if (event.type === "session.deleted") {
        if (session === p.sessionID) session = null
        return
      }
      session = p.sessionID
    },
  }
}
