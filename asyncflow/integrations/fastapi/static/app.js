// The runs page: a table of runs, and a run's plan growing live from its server-sent events.
// Plain JavaScript, no build step, nothing from outside the app.
"use strict";
(function () {
  const PREFIX = window.ASYNCFLOW_PREFIX || "";
  const REPLAYED = "completed in an earlier execution";  // (the engine's reason for a replayed step)
  const FINISHED = new Set(["completed", "failed", "bailed", "cancelled", "skipped"]);
  const KINDS = ["run_created", "run_started", "stage_started", "stage_finished", "action_started",
    "action_finished", "action_retry", "step_skipped", "stage_inserted", "action_inserted",
    "run_finished", "run_suspended", "run_interrupted", "run_resumed", "message"];
  const $ = (id) => document.getElementById(id);
  let listTimer = null, source = null, refreshTimer = null, currentRun = null, nextCursor = null, appended = false;
  let lastEventId = null;  // the cursor of the last event shown: a new stream goes on after it
  let knownSteps = new Set();

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (key === "class") node.className = value; else node.setAttribute(key, value === true ? "" : value);
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }
  const badge = (text, cls) => el("span", { class: "badge " + (cls || "st-" + text) }, text);
  const when = (seconds) => seconds ? new Date(seconds * 1000).toLocaleString() : "";
  const secs = (s) => s >= 1 ? s.toFixed(2) + " s" : (s * 1000).toFixed(1) + " ms";
  const live = (text) => { $("live").textContent = text; };

  async function api(path, options) {
    const response = await fetch(PREFIX + path, Object.assign({ headers: { "Accept": "application/json" } }, options));
    const type = response.headers.get("content-type") || "";
    const body = type.includes("json") ? await response.json() : await response.text();
    if (!response.ok) throw new Error((body && body.detail) || response.statusText);
    return body;
  }

  // ---- the runs table ------------------------------------------------------------------------
  async function loadRuns(append) {
    const params = new URLSearchParams();
    const status = $("status-filter").value, workflow = $("workflow-filter").value.trim();
    if (status) params.set("status", status);
    if (workflow) params.set("workflow_id", workflow);
    if (append && nextCursor) params.set("cursor", nextCursor);
    try {
      const page = await api("?" + params.toString());
      const body = document.querySelector("#runs tbody");
      if (!append) body.replaceChildren();
      appended = Boolean(append);
      for (const run of page.runs) {
        body.append(el("tr", { "data-run": run.run_id },
          el("td", {}, el("a", { href: "#/run/" + encodeURIComponent(run.run_id) }, el("code", {}, run.run_id))),
          el("td", {}, run.workflow_id),
          el("td", {}, badge(run.status)),
          el("td", {}, when(run.created_at)),
          el("td", {}, when(run.updated_at))));
      }
      nextCursor = page.next_cursor;
      $("more").hidden = !nextCursor;
      $("runs-empty").hidden = body.children.length > 0;
      live("Updated " + new Date().toLocaleTimeString());
    } catch (error) { live("Could not load runs: " + error.message); }
  }

  function showRuns() {
    closeRun();
    $("run-view").hidden = true; $("runs-view").hidden = false;
    loadRuns(false);
    // Live: the first page again every two seconds, unless more pages were opened.
    listTimer = setInterval(() => { if (!appended) loadRuns(false); }, 2000);
  }

  // ---- one run -------------------------------------------------------------------------------
  function stepKey(step) { return step.kind + ":" + step.stage_id + ":" + (step.action_name || "") + ":" + step.depth; }

  function stepLine(step) {
    const replayed = step.reason === REPLAYED;
    const meta = [];
    if (step.attempts > 1) meta.push(step.attempts + " attempts");
    if (step.duration) meta.push(secs(step.duration));
    if (step.inserted_by) meta.push("inserted by " + step.inserted_by);
    if (step.reason && !replayed) meta.push(step.reason);
    const key = stepKey(step);
    const fresh = knownSteps.size > 0 && !knownSteps.has(key);
    knownSteps.add(key);
    return el("div", { class: "step" + (fresh ? " new" : ""), "data-step": key },
      el("span", { class: "name" }, step.kind === "stage" ? step.stage_id : step.action_name),
      badge(step.status),
      // An inserted stage's own actions are dynamic too; the badge is on the stage that holds them.
      step.dynamic && (step.kind === "stage" || step.inserted_by) ? badge("dynamic", "dynamic") : null,
      replayed ? badge("replayed", "replayed") : null,
      meta.length ? el("span", { class: "meta" }, meta.join(" · ")) : null,
      step.error ? el("span", { class: "error" }, step.error) : null);
  }

  function renderPlan(plan) {
    const list = $("plan");
    const items = plan.map((stage) => el("li", { class: "stage" }, stepLine(stage),
      stage.actions.length ? el("ol", {}, ...stage.actions.map((a) => el("li", { class: "action" }, stepLine(a)))) : null));
    list.replaceChildren(...items);
    if (!plan.length) list.append(el("li", {}, "The plan shows here once the run ends or suspends (it executes in another process)."));
  }

  function renderTimeline(plan) {
    const steps = plan.flatMap((stage) => [stage, ...stage.actions]);
    const end = Math.max(0.000001, ...steps.map((s) => s.started_at + s.duration));
    $("timeline").replaceChildren(...steps.map((s) => el("div", { class: "row", role: "listitem" },
      el("span", { class: "label" }, (s.kind === "stage" ? "▸ " + s.stage_id : "  " + s.action_name)),
      el("span", { class: "track" }, el("span", {
        class: "bar st-" + s.status,
        style: "left:" + (100 * s.started_at / end).toFixed(2) + "%;width:" + (100 * s.duration / end).toFixed(2) + "%",
        title: s.status + " " + secs(s.duration),
      })))));
  }

  function renderRun(run) {
    $("run-id").textContent = run.run_id;
    const facts = [["Workflow", run.workflow_id], ["Status", badge(run.status)], ["Created", when(run.created_at)],
      ["Updated", when(run.updated_at)], ["Duration", secs(run.duration)]];
    if (run.idempotency_key) facts.push(["Idempotency key", run.idempotency_key]);
    if (run.status === "suspended") {  // (a run resumed since keeps the reason in its record: not shown)
      facts.push(["Suspended", run.suspend_reason || ""]);
      if (run.suspend_data !== null && run.suspend_data !== undefined) facts.push(["Suspend data", el("code", {}, JSON.stringify(run.suspend_data))]);
    }
    if (run.error) facts.push(["Error", run.error + (run.failed_stage ? " (stage " + run.failed_stage + (run.failed_action ? ", action " + run.failed_action : "") + ")" : "")]);
    if (run.bail_reason) facts.push(["Bailed", run.bail_reason]);
    $("run-facts").replaceChildren(...facts.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
    $("resume-form").hidden = run.status !== "suspended";
    $("cancel").hidden = FINISHED.has(run.status);
    renderPlan(run.plan);
    renderTimeline(run.plan);
  }

  async function refreshRun() {
    if (!currentRun) return;
    try { renderRun(await api("/" + encodeURIComponent(currentRun))); }
    catch (error) { live("Could not load the run: " + error.message); }
  }
  function soon() { clearTimeout(refreshTimer); refreshTimer = setTimeout(refreshRun, 120); }

  function addEvent(kind, data) {
    const what = [kind, data.stage_id, data.action_name, data.status, data.message].filter(Boolean).join(" ");
    $("events").prepend(el("li", {}, what + (data.payload !== undefined && data.payload !== null ? " " + JSON.stringify(data.payload) : "")));
  }

  function watch(runId) {
    if (source) source.close();
    const after = lastEventId ? "?after=" + encodeURIComponent(lastEventId) : "";
    source = new EventSource(PREFIX + "/" + encodeURIComponent(runId) + "/events" + after);
    for (const kind of KINDS) {
      source.addEventListener(kind, (message) => {
        lastEventId = message.lastEventId || lastEventId;
        addEvent(kind, JSON.parse(message.data));
        soon();
        if (kind === "run_finished" || kind === "run_suspended") { source.close(); source = null; live("The run " + (kind === "run_finished" ? "ended" : "is suspended")); }
      });
    }
    source.onopen = () => live("Watching live");
    source.onerror = () => { if (source && source.readyState === EventSource.CLOSED) live("Not watching"); };
  }

  function closeRun() {
    if (source) { source.close(); source = null; }
    clearInterval(listTimer); listTimer = null; clearTimeout(refreshTimer);
  }

  async function showRun(runId) {
    closeRun();
    currentRun = runId; knownSteps = new Set(); lastEventId = null;
    $("runs-view").hidden = true; $("run-view").hidden = false;
    $("events").replaceChildren(); $("action-result").textContent = "";
    await refreshRun();
    watch(runId);
    $("main").focus();
  }

  $("resume-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    let data;
    try { data = JSON.parse($("resume-data").value || "null"); }
    catch (error) { $("action-result").textContent = "The data is not JSON: " + error.message; return; }
    const key = $("resume-key").value.trim();
    try {
      await api("/" + encodeURIComponent(currentRun) + "/resume", {
        method: "POST", headers: { "Content-Type": "application/json", "Accept": "application/json" },
        body: JSON.stringify(key ? { data, key } : { data }),
      });
      $("action-result").textContent = "Resumed";
      watch(currentRun); soon();
    } catch (error) { $("action-result").textContent = "Could not resume: " + error.message; }
  });
  $("cancel").addEventListener("click", async () => {
    if (!confirm("Cancel this run?")) return;
    try { await api("/" + encodeURIComponent(currentRun) + "/cancel", { method: "POST" }); $("action-result").textContent = "Cancelled"; soon(); }
    catch (error) { $("action-result").textContent = "Could not cancel: " + error.message; }
  });
  $("filters").addEventListener("submit", (event) => { event.preventDefault(); loadRuns(false); });
  $("status-filter").addEventListener("change", () => loadRuns(false));
  $("workflow-filter").addEventListener("input", () => loadRuns(false));
  $("more").addEventListener("click", () => loadRuns(true));

  function route() {
    const match = location.hash.match(/^#\/run\/(.+)$/);
    if (match) showRun(decodeURIComponent(match[1])); else { currentRun = null; showRuns(); }
  }
  window.addEventListener("hashchange", route);
  route();
})();
