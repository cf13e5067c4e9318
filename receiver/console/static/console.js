"use strict";
// The console's one script: reads the receiver's API (same origin, session cookie) and draws the
// views. Everything from the API is written with textContent / attributes, never parsed as HTML.

const API = "/api/v1";
const PAGE = 50;
const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

function svg(tag, attrs) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
  return node;
}

const fmtTime = (ts) => (ts ? new Date(ts).toLocaleString() : "");
function fmtDur(ms) {
  if (ms === null || ms === undefined) return "";
  const s = Math.round(ms / 1000);
  if (s < 60) return ms < 1000 ? `${ms} ms` : `${s} s`;
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60);
  return h ? `${h} h ${m} min` : `${m} min ${s % 60} s`;
}
function fmtSize(n) {
  if (n === null || n === undefined) return "";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0, v = Number(n);
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
  return i ? `${v.toFixed(1)} ${units[i]}` : `${v} B`;
}
const short = (text, n = 120) => {
  const s = text === null || text === undefined ? "" : typeof text === "string" ? text : JSON.stringify(text);
  return s.length > n ? s.slice(0, n) + "…" : s;
};
const json = (v) => JSON.stringify(v, null, 2);

// --- the views -------------------------------------------------------------------------------

const COMMON_FILTERS = [["server", "Server"], ["since", "From", "datetime-local"], ["until", "To", "datetime-local"]];

const VIEWS = {
  websh: {
    title: "Websh history", api: "websh-sessions",
    filters: [["username", "Username"], ["groupname", "Groupname"], ["operator", "Operator"],
              ["remote_ip", "Remote IP"]],
    cols: [["server", "Server"], ["username", "Username"], ["groupname", "Groupname"],
           ["duration_ms", "Duration", fmtDur], ["operator", "Operator"], ["browser", "Browser", short],
           ["remote_ip", "Remote IP"], ["started_at", "Date", fmtTime]],
    open: (row) => { location.hash = "#/websh/" + encodeURIComponent(row.session_id); },
  },
  webftp: {
    title: "WebFTP history", api: "webftp-transfers",
    filters: [["username", "Username"], ["type", "Type", ["", "upload", "download"]],
              ["status", "Status"], ["remote_ip", "Remote IP"], ["q", "Path contains"]],
    cols: [["server", "Server"], ["username", "Username"], ["groupname", "Groupname"], ["type", "Type"],
           ["object_name", "Object name"], ["size", "Size", fmtSize], ["remote_ip", "Remote IP"],
           ["ts", "Date", fmtTime]],
    expand: (r) => dl([["Path", r.path], ["Status", r.status], ["Error", r.error],
                       ["Duration", fmtDur(r.duration_ms)], ["Source", r.source], ["Provenance", r.provenance]]),
  },
  commands: {
    title: "Command history", api: "commands",
    filters: [["shell", "Shell", ["", "system", "internal"]], ["status", "Status"], ["operator", "Operator"],
              ["q", "Line contains"]],
    cols: [["server", "Server"], ["shell", "Shell"], ["line", "Line", short], ["result", "Result", (v) => short(v, 60)],
           ["operator", "Operator"], ["status", "Status", null, (r) => `status-${r.status}`], ["ts", "Date", fmtTime]],
    expand: (r) => [
      el("h2", {}, "Output"), el("pre", { class: "output" }, r.result ?? ""),
      dl([["Exit code", r.exit_code], ["User", r.user], ["Reason", r.reason], ["Scheduled", fmtTime(r.scheduled_at)],
          ["Started", fmtTime(r.started_at)], ["Finished", fmtTime(r.finished_at)]]),
      el("h2", {}, "Status history"),
      table([["status", "Status"], ["ts", "When", fmtTime], ["exit_code", "Exit code"], ["reason", "Reason"]],
            r.history || []),
    ],
  },
  logs: {
    title: "System logs", api: "system-logs",
    filters: [["program", "Program"], ["level", "Level", ["", "emerg", "alert", "crit", "error", "warning",
              "notice", "info", "debug"]], ["pid", "PID"], ["q", "Message contains"]],
    cols: [["server", "Server"], ["program", "Program"], ["level", "Level", null, (r) => `lvl-${r.level}`],
           ["pid", "PID"], ["message", "Message", (v) => short(v, 200), () => "msg"], ["ts", "Date", fmtTime]],
    expand: (r) => [el("pre", { class: "message" }, r.message ?? ""),
                    dl([["Facility", r.facility], ["Host name", r.hostname], ["Source", r.source],
                        ["Truncated", r.truncated], ["Provenance", r.provenance], ["Extra", r.extra]])],
  },
  activity: {
    title: "User activity", api: "user-activity",
    filters: [["user", "User"], ["action", "Action"], ["result", "Result"], ["ip", "IP address"]],
    cols: [["user", "User"], ["ts", "Time", fmtTime], ["ip", "IP address"], ["action", "Action"],
           ["result", "Result"], ["details", "Details", (v) => short(v, 80)], ["server", "Server"]],
    expand: (r) => dl([["Details", r.details], ["Provenance", r.provenance], ["Sender", r.sender],
                       ["Extra", r.extra]]),
    charts: drawActivityCharts,
  },
  signs: { title: "System signs", api: "metrics", filters: [], custom: drawSigns },
};

function dl(pairs) {
  const node = el("dl", { class: "meta" });
  for (const [k, v] of pairs) {
    if (v === undefined || v === null || v === "") continue;
    node.append(el("dt", {}, k), el("dd", {}, typeof v === "object" ? el("pre", {}, json(v)) : String(v)));
  }
  return node;
}

function cell(col, row) {
  const [key, , fmt, cls] = col;
  const v = row[key];
  return el("td", { class: cls ? cls(row) : null, "data-col": key },
            fmt ? fmt(v) : v === null || v === undefined ? "" : typeof v === "object" ? short(v) : String(v));
}

function table(cols, rows, onRow, expand) {
  const body = el("tbody");
  for (const row of rows) {
    const tr = el("tr", { class: onRow || expand ? "row" : null, "data-id": row.id || row.session_id || row.command_id },
                  cols.map((c) => cell(c, row)));
    body.append(tr);
    if (onRow) tr.addEventListener("click", () => onRow(row));
    else if (expand) {
      tr.addEventListener("click", () => {
        const next = tr.nextElementSibling;
        if (next && next.classList.contains("detail")) { next.remove(); return; }
        tr.after(el("tr", { class: "detail" }, el("td", { colspan: cols.length }, expand(row))));
      });
    }
  }
  return el("table", { class: "rows" }, el("thead", {}, el("tr", {}, cols.map((c) => el("th", {}, c[1])))), body);
}

// --- routing and filters ---------------------------------------------------------------------

function route() {
  const [path, query] = location.hash.replace(/^#/, "").split("?");
  const parts = path.split("/").filter(Boolean);
  return { view: parts[0] || "websh", id: parts[1] ? decodeURIComponent(parts[1]) : null,
           params: new URLSearchParams(query || "") };
}

function setParams(view, params) {
  const q = params.toString();
  location.hash = `#/${view}` + (q ? `?${q}` : "");
}

function toLocalInput(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  const pad = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}`;
}

function drawFilters(name, spec, params) {
  const form = $("filters");
  form.replaceChildren();
  if (!spec.filters.length && !spec.custom) return;
  for (const [key, label, kind] of [...COMMON_FILTERS, ...spec.filters]) {
    let input;
    if (Array.isArray(kind)) {
      input = el("select", { name: key }, kind.map((o) => el("option", { value: o }, o || "any")));
      input.value = params.get(key) || "";
    } else if (kind === "datetime-local") {
      input = el("input", { type: "datetime-local", name: key, value: toLocalInput(params.get(key)) });
    } else {
      input = el("input", { type: "search", name: key, value: params.get(key) || "" });
    }
    form.append(el("label", {}, label, input));
  }
  form.append(el("button", { type: "submit", id: "apply" }, "Apply"));
  form.onsubmit = (ev) => {
    ev.preventDefault();
    const next = new URLSearchParams();
    for (const [k, v] of new FormData(form).entries()) {
      if (!v) continue;
      next.set(k, k === "since" || k === "until" ? new Date(v).toISOString() : v);
    }
    setParams(name, next);
  };
}

async function api(path, params) {
  const url = `${API}/${path}` + (params && [...params].length ? `?${params}` : "");
  const resp = await fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } });
  if (resp.status === 401) { location.href = "/console/login"; throw new Error("signed out"); }
  const body = await resp.json();
  if (!resp.ok) throw new Error(body.reason || `HTTP ${resp.status}`);
  return body;
}

function showError(err) {
  $("error").hidden = !err;
  $("error").textContent = err ? String(err.message || err) : "";
}

// --- list views: newest first, paged by the API's cursor -------------------------------------

async function drawList(name, spec, params) {
  const query = new URLSearchParams(params);
  query.delete("trail");
  query.set("limit", String(PAGE));
  query.set("order", "desc");
  const page = await api(spec.api, query);
  const onRow = spec.open || null;
  $("content").replaceChildren(
    page.items.length ? table(spec.cols, page.items, onRow, spec.expand) : el("p", { class: "empty" }, "No rows."));
  const before = params.get("before");
  $("page-info").textContent = `${page.count} rows` + (before ? " (older page)" : "");
  $("pager").hidden = false;
  $("older").disabled = page.count < PAGE || page.next_before === null || page.next_before === undefined;
  const trailOf = (p) => (p.get("trail") === null ? [] : p.get("trail").split(","));
  $("older").onclick = () => {
    const next = new URLSearchParams(params);
    const trail = trailOf(next);
    trail.push(before || "");  // "" stands for the newest page
    next.set("trail", trail.join(","));
    next.set("before", String(page.next_before));
    setParams(name, next);
  };
  $("newer").disabled = !before;
  $("newer").onclick = () => {
    const next = new URLSearchParams(params);
    const trail = trailOf(next);
    const prev = trail.pop();
    if (trail.length) next.set("trail", trail.join(",")); else next.delete("trail");
    if (prev) next.set("before", prev); else next.delete("before");
    setParams(name, next);
  };
}

// --- Websh session detail: metadata, Record, playback -----------------------------------------

async function drawSession(id) {
  $("title").textContent = "Websh session";
  $("filters").replaceChildren();
  $("pager").hidden = true;
  const page = await api("websh-sessions", new URLSearchParams({ session_id: id, limit: "1" }));
  const s = page.items[0];
  if (!s) { $("content").replaceChildren(el("p", {}, "No such session.")); return; }
  const record = (s.commands || []).map((c) => ({
    ...c,
    who: c.user_name ?? c.user ?? (c.uid !== undefined ? `uid ${c.uid}` : ""),
    ran: (c.programs || []).map((p) => (Array.isArray(p.argv) ? p.argv.join(" ") : String(p.argv ?? ""))
      + (p.exit_status !== undefined && p.exit_status !== null ? ` → ${p.exit_status}` : "")).join("\n"),
  }));
  const tamperedCell = (r) => (r.tampered ? el("span", { class: "tampered", title: r.tampered_reason || "" },
                                               "tampered" + (r.tampered_reason ? `: ${r.tampered_reason}` : "")) : "");
  const cols = [["seq", "#"], ["started_at", "Started", fmtTime], ["command", "Command", null, () => "mono"],
                ["exit_code", "Exit code"], ["cwd", "Working directory", null, () => "mono"],
                ["duration_ms", "Duration", fmtDur], ["who", "User"], ["ran", "Programs", null, () => "mono"]];
  const rec = table(cols, record);
  rec.id = "record";
  rec.querySelector("thead tr").append(el("th", {}, "Flags"));
  rec.querySelectorAll("tbody tr").forEach((tr, i) => tr.append(el("td", { "data-col": "tampered" },
                                                                   tamperedCell(record[i]))));
  const player = el("div", { id: "player" });
  $("content").replaceChildren(
    el("p", {}, el("a", { href: "#/websh" }, "← Websh history")),
    dl([["Server", s.server], ["Session", s.session_id], ["Username", s.username], ["Groupname", s.groupname],
        ["Operator", s.operator], ["Browser", s.browser], ["Remote IP", s.remote_ip],
        ["Started", fmtTime(s.started_at)], ["Ended", fmtTime(s.ended_at)], ["Duration", fmtDur(s.duration_ms)],
        ["State", s.state], ["Shell", s.shell], ["TTY", s.tty], ["Exit status", s.exit_status],
        ["Commands", s.commands_recorded], ["Exec trail", s.exec_trail]]),
    el("h2", {}, "Record"), rec, el("h2", {}, "Recording"), player);
  const cast = `${API}/websh-recordings/${encodeURIComponent(id)}`;
  const head = await fetch(cast, { method: "HEAD", credentials: "same-origin" });
  if (head.ok && window.AsciinemaPlayer) {
    // kept on the page so that a reader (or a test) can drive the playback
    window.castPlayer = window.AsciinemaPlayer.create(cast, player, { fit: "width", autoPlay: false, preload: true });
  } else {
    player.append(el("p", { class: "empty" }, "No recording was shipped for this session."));
  }
}

// --- User activity charts: per hour by action and result, top users and IPs ------------------

const PALETTE = ["#2563eb", "#dc2626", "#059669", "#d97706", "#7c3aed", "#db2777", "#0891b2", "#65a30d"];

async function drawActivityCharts(params) {
  const q = new URLSearchParams();
  for (const k of ["server", "since", "until", "user", "action", "result", "ip"]) if (params.get(k)) q.set(k, params.get(k));
  const sum = await api("user-activity/summary", q);
  const box = $("charts");
  const hours = [...new Set(sum.hours.map((h) => h.hour))].sort();
  const series = [...new Set(sum.hours.map((h) => `${h.action} ${h.result}`))].sort();
  const colour = (s) => PALETTE[series.indexOf(s) % PALETTE.length];
  const totals = hours.map((h) => sum.hours.filter((x) => x.hour === h).reduce((a, x) => a + x.count, 0));
  const max = Math.max(1, ...totals);
  const STEP = 48, W = Math.max(320, hours.length * STEP + 40), H = 180;
  const graph = svg("svg", { width: W, height: H + 30, id: "activity-hours", role: "img" });
  hours.forEach((hour, i) => {
    let y = H;
    for (const x of sum.hours.filter((v) => v.hour === hour).sort((a, b) => (`${a.action} ${a.result}` < `${b.action} ${b.result}` ? -1 : 1))) {
      const h = (x.count / max) * (H - 10);
      y -= h;
      const bar = svg("rect", { class: "bar", x: 30 + i * STEP, y, width: 36, height: Math.max(h, 1),
                                fill: colour(`${x.action} ${x.result}`), "data-hour": hour, "data-action": x.action,
                                "data-result": x.result, "data-count": x.count });
      const title = svg("title", {});
      title.textContent = `${new Date(hour).toLocaleString()} · ${x.action} ${x.result}: ${x.count}`;
      bar.append(title);
      bar.addEventListener("click", () => {
        const next = new URLSearchParams(params);
        const end = new Date(new Date(hour).getTime() + 3600e3).toISOString();
        next.set("since", new Date(hour).toISOString()); next.set("until", end);
        next.set("action", x.action); next.set("result", String(x.result));
        next.delete("before"); next.delete("trail");
        setParams("activity", next);
      });
      graph.append(bar);
    }
    const label = svg("text", { x: 30 + i * STEP, y: H + 14 });
    label.textContent = new Date(hour).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", hourCycle: "h23" });
    const total = svg("text", { x: 30 + i * STEP, y: y - 3, class: "total" });
    total.textContent = String(totals[i]);
    graph.append(label, total);
  });
  const legend = el("div", { class: "legend" }, series.map((s) => el("span", { style: null, "data-series": s }, s)));
  legend.querySelectorAll("span").forEach((sp) => sp.style.setProperty("--c", colour(sp.dataset.series)));
  const hbars = (title, rows, key, id) => {
    const top = Math.max(1, ...rows.map((r) => r.count));
    return el("div", { class: "chart hbars", id }, el("h2", {}, title), rows.map((r) => {
      const fill = el("span", { class: "fill" });
      fill.style.width = `${Math.round((r.count / top) * 12)}rem`;
      return el("div", { class: "hbar", "data-key": r[key], "data-count": r.count, onclick: () => {
        const next = new URLSearchParams(params);
        next.set(key, r[key]); next.delete("before"); next.delete("trail");
        setParams("activity", next);
      } }, el("span", { class: "label" }, r[key] ?? "(none)"), fill, el("span", {}, r.count));
    }));
  };
  box.replaceChildren(
    el("div", { class: "chart" }, el("h2", {}, "Activity per hour"), graph, legend),
    el("div", { class: "charts-row" }, hbars("Top users", sum.users, "user", "top-users"),
       hbars("Top source IPs", sum.ips, "ip", "top-ips")));
}

// --- System signs: per server, CPU, memory, disk and network over time ------------------------

async function drawSigns(params) {
  $("pager").hidden = true;
  const q = new URLSearchParams({ limit: "500", order: "desc" });
  for (const k of ["server", "since", "until"]) if (params.get(k)) q.set(k, params.get(k));
  const page = await api("metrics", q);
  const byServer = new Map();
  for (const r of page.items.slice().reverse()) {
    if (!byServer.has(r.server)) byServer.set(r.server, []);
    byServer.get(r.server).push(r);
  }
  const out = [];
  for (const [server, rows] of byServer) {
    const t = rows.map((r) => new Date(r.ts).getTime() / 1000);
    const cpu = rows.map((r) => r.cpu?.percent ?? null);
    const mem = rows.map((r) => r.memory?.percent ?? null);
    const disk = rows.map((r) => Math.max(0, ...(r.disks || []).map((d) => d.percent)));
    const sumNet = (r, f) => Object.values(r.network || {}).reduce((a, n) => a + (n[f] || 0), 0);
    const rx = rows.map((r) => sumNet(r, "bytes_recv_per_s")), tx = rows.map((r) => sumNet(r, "bytes_sent_per_s"));
    const box = el("div", { class: "chart signs", "data-server": server, "data-points": rows.length },
                   el("h2", {}, server));
    out.push(box);
    const last = rows[rows.length - 1];
    box.append(dl([["CPU", `${last.cpu?.percent ?? "?"} %`], ["Memory", `${last.memory?.percent ?? "?"} %`],
                   ["Load", (last.load || []).join(" / ")], ["Samples", rows.length]]));
    if (window.uPlot) {
      const opts = (title, labels, unit) => ({
        title, width: 640, height: 200,
        series: [{}, ...labels.map((l, i) => ({ label: l, stroke: PALETTE[i], width: 1.5 }))],
        axes: [{}, { values: (u, v) => v.map((x) => `${x}${unit}`) }],
      });
      new window.uPlot(opts("CPU, memory, disk (%)", ["CPU", "Memory", "Disk (fullest)"], "%"), [t, cpu, mem, disk], box);
      const net = opts("Network (per second)", ["Received", "Sent"], "");
      net.axes[1] = { size: 70, values: (u, v) => v.map((x) => fmtSize(x)) };
      new window.uPlot(net, [t, rx, tx], box);
    }
  }
  $("content").replaceChildren(...(out.length ? out : [el("p", { class: "empty" }, "No system signs yet.")]));
}

// --- main ------------------------------------------------------------------------------------

async function render() {
  const { view, id, params } = route();
  const spec = VIEWS[view] || VIEWS.websh;
  document.querySelectorAll("#nav a").forEach((a) => a.classList.toggle("active", a.dataset.view === view));
  $("charts").replaceChildren();
  showError(null);
  document.body.dataset.view = view;
  document.body.dataset.ready = "";
  try {
    if (view === "websh" && id) {
      await drawSession(id);
    } else {
      $("title").textContent = spec.title;
      drawFilters(view, spec, params);
      if (spec.custom) await spec.custom(params);
      else {
        if (spec.charts) await spec.charts(params);
        await drawList(view, spec, params);
      }
    }
  } catch (err) {
    showError(err);
  }
  document.body.dataset.ready = "1";
}

window.addEventListener("hashchange", render);
render();
