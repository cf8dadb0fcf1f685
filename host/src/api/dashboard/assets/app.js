// Kiln dashboard: plain JavaScript, no framework, no build step.
//
// State comes from one initial load (GET /v1/jobs?limit=100, /v1/plugins, /v1/queues,
// /v1/nodes) and is then kept current by the event stream GET /v1/events, resumed after a
// cut; there is no polling of job state. Queue and node figures (GET /v1/queues,
// /v1/nodes, /v1/schedules) are refreshed every 5 s, the newest batches (GET /v1/batches) every 2 s.
// Everything the page
// shows that came from the server is inserted as text, never as HTML.
'use strict';

(() => {
  const STATUSES = ['waiting', 'queued', 'running', 'completed', 'failed', 'cancelled'];
  const TERMINAL = new Set(['completed', 'failed', 'cancelled']);
  const EVENT_NAMES = ['status', 'progress', 'partial', 'token', 'replayed', 'completed', 'failed', 'cancelled'];
  const RANK = { waiting: -1, queued: 0, running: 1, completed: 2, failed: 2, cancelled: 2 };
  // Fields of a job that do not change as it runs: safe to take from any snapshot.
  const FIXED = ['created_at', 'queue', 'priority', 'max_attempts', 'run_at', 'links', 'type', 'concurrency_key', 'webhook', 'depends_on', 'on_dependency_failure'];
  const MAX_JOBS = 1000; // jobs kept in memory
  const MAX_ROWS = 200; // rows shown
  const MAX_ACTIVITY = 60;
  const MAX_LOG_ROWS = 500;

  const jobs = new Map(); // id -> job (the API's JSON, kept current by events)
  const rows = new Map(); // id -> <tr>
  const activity = []; // newest first
  const pendingRefresh = new Set(); // ids to read once with GET /v1/jobs/{id}
  let detail = null; // {id, source, events (the log's, without tokens), shown, tokens: label -> text, …}
  let renderQueued = false;

  const $ = (selector, root = document) => root.querySelector(selector);

  // ---- helpers ------------------------------------------------------------------------

  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs)) {
      if (value === undefined || value === null || value === false) continue;
      if (key === 'text') node.textContent = value;
      else if (key === 'class') node.className = value;
      else node.setAttribute(key, value === true ? '' : value);
    }
    for (const child of children) node.append(child);
    return node;
  }

  // Calls the API; throws an Error whose message is the API's `kind: message`.
  async function api(method, path, body) {
    const init = { method, headers: { accept: 'application/json' } };
    if (body !== undefined) {
      init.headers['content-type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(path, init);
    } catch (error) {
      throw new Error(`${method} ${path}: ${error.message}`);
    }
    const text = await response.text();
    let json = null;
    try { json = text ? JSON.parse(text) : null; } catch { /* not JSON */ }
    if (!response.ok) {
      const e = json && json.error;
      const error = new Error(e ? `${e.kind}: ${e.message}` : `${method} ${path}: HTTP ${response.status}`);
      error.status = response.status;
      throw error;
    }
    return json;
  }

  let noticeTimer = null;
  function notice(message, isError = false) {
    const box = $('#notice');
    box.textContent = message;
    box.className = isError ? 'notice error' : 'notice';
    box.dataset.kind = isError ? 'error' : 'info';
    box.hidden = false;
    clearTimeout(noticeTimer);
    noticeTimer = setTimeout(() => { box.hidden = true; }, isError ? 15000 : 6000);
  }

  const ms = (iso) => (iso ? Date.parse(iso) : NaN);
  // UUIDv7 ids start with their creation time, so jobs made in the same minute share
  // their first digits: the page shows the random end instead (the full id as tooltip).
  const idEnd = (id) => `…${id.slice(-12)}`;
  const json = (value) => (value === undefined || value === null ? '' : JSON.stringify(value, null, 2));

  // A job id as the page shows it: its end, the whole id as tooltip; a click copies it.
  function idCode(id) {
    return el('code', { class: 'job-id', text: idEnd(id), title: `${id} (click to copy)`, 'data-copy': id, 'data-testid': 'job-id' });
  }

  // Copies `text`, then shows a short hint under `anchor`. navigator.clipboard needs a
  // secure context (https or loopback); elsewhere the older execCommand('copy') is used.
  let copyTimer = null;
  async function copyText(text, anchor) {
    let copied = false;
    try {
      await navigator.clipboard.writeText(text);
      copied = true;
    } catch {
      const scratch = el('textarea', { class: 'offscreen', readonly: true });
      scratch.value = text;
      document.body.append(scratch);
      scratch.select();
      try { copied = document.execCommand('copy'); } catch { copied = false; }
      scratch.remove();
    }
    // One hint element, placed over the id: lists re-rendered meanwhile do not take it away.
    const hint = $('#copied');
    const rect = anchor.getBoundingClientRect();
    hint.textContent = copied ? 'copied' : 'could not copy: select the id and press Ctrl+C';
    hint.dataset.copied = text;
    hint.style.left = `${rect.left + window.scrollX}px`;
    hint.style.top = `${rect.bottom + window.scrollY + 2}px`;
    hint.hidden = false;
    clearTimeout(copyTimer);
    copyTimer = setTimeout(() => { hint.hidden = true; }, 2000);
  }

  function duration(millis) {
    if (!Number.isFinite(millis) || millis < 0) return '';
    const s = Math.floor(millis / 1000);
    if (s < 60) return `${s}s`;
    if (s < 3600) return `${Math.floor(s / 60)}m ${String(s % 60).padStart(2, '0')}s`;
    if (s < 86400) return `${Math.floor(s / 3600)}h ${String(Math.floor(s / 60) % 60).padStart(2, '0')}m`;
    return `${Math.floor(s / 86400)}d ${Math.floor(s / 3600) % 24}h`;
  }

  const runMillis = (job) => (job.started_at ? (ms(job.finished_at) || Date.now()) - ms(job.started_at) : NaN);
  const thresholdSecs = () => Math.max(1, Number($('[name=threshold]').value) || 60);

  // ---- state --------------------------------------------------------------------------

  // Merges a job snapshot from the API. Live events may already be ahead of it (the
  // snapshot was read before they were applied): then only its fixed fields are taken.
  function merge(snapshot) {
    const job = jobs.get(snapshot.id);
    if (!job) {
      jobs.set(snapshot.id, { ...snapshot });
      return;
    }
    const sameAttempt = snapshot.attempt === job.attempt;
    const fresher = snapshot.attempt > job.attempt || (sameAttempt && RANK[snapshot.status] >= RANK[job.status]);
    if (fresher) {
      const progress = job.progress || 0;
      const message = job.message;
      Object.assign(job, snapshot);
      if (sameAttempt && snapshot.status === 'running' && progress > snapshot.progress) {
        job.progress = progress;
        job.message = message;
      }
    } else {
      for (const key of FIXED) if (key in snapshot) job[key] = snapshot[key];
      if (snapshot.usage) job.usage = snapshot.usage;
    }
  }

  function forgetOldJobs() {
    if (jobs.size <= MAX_JOBS) return;
    const old = [...jobs.values()].filter((j) => TERMINAL.has(j.status)).sort(byNewest).slice(MAX_JOBS / 2);
    for (const job of old) {
      if (detail && detail.id === job.id) continue;
      jobs.delete(job.id);
      const row = rows.get(job.id);
      if (row) row.remove();
      rows.delete(job.id);
    }
  }

  // One event of /v1/events: {job_id, type, status, seq, data}.
  function onEvent(name, message) {
    let event;
    try { event = JSON.parse(message.data); } catch { return; }
    const now = new Date().toISOString();
    let job = jobs.get(event.job_id);
    if (!job) {
      job = { id: event.job_id, type: event.type, status: event.status, progress: 0, message: null, attempt: 1, created_at: now };
      jobs.set(job.id, job);
      pendingRefresh.add(job.id);
    }
    job.type = event.type;
    job.status = event.status;
    const data = event.data || {};
    switch (name) {
      case 'status':
        if (data.attempt && data.attempt !== job.attempt) {
          job.attempt = data.attempt;
          job.progress = 0;
          job.message = null;
        }
        if (event.status === 'running') {
          job.started_at = now;
          job.finished_at = null;
          job.error = null;
        }
        if (event.status === 'queued') job.finished_at = null;
        job.waiting_for = data.waiting_for || [];
        if (data.error) job.error = data.error;
        break;
      case 'progress':
        job.progress = Math.max(job.progress || 0, data.progress || 0);
        job.message = data.message;
        break;
      case 'completed':
        job.result = data.result;
        job.progress = 100;
        break;
      case 'failed':
        job.error = data.error;
        break;
      default:
        break;
    }
    if (TERMINAL.has(event.status) && !job.finished_at) job.finished_at = now;
    if (name !== 'token' && name !== 'progress') {
      let text = name === 'status' ? event.status : name;
      if (name === 'partial') text = `partial ${data.name}`;
      if (name === 'failed' && data.error) text = `failed: ${data.error.kind}`;
      if (name === 'status' && data.attempt > 1) text += ` (attempt ${data.attempt})`;
      activity.unshift({ at: now, id: job.id, type: job.type, name, text });
      if (activity.length > MAX_ACTIVITY) activity.length = MAX_ACTIVITY;
    }
    if (detail && detail.id === job.id && TERMINAL.has(event.status)) pendingRefresh.add(job.id);
    forgetOldJobs();
    scheduleRender();
  }

  // Reads the jobs first seen through events (for their creation time, queue, usage):
  // at most 20 a second, so a burst of new jobs cannot flood the server.
  async function flushRefreshes() {
    const ids = [...pendingRefresh].slice(0, 20);
    for (const id of ids) pendingRefresh.delete(id);
    await Promise.all(ids.map(async (id) => {
      try {
        merge(await api('GET', `/v1/jobs/${id}`));
      } catch { /* expired or gone: keep what the events said */ }
    }));
    if (ids.length) scheduleRender();
  }

  async function loadJobs() {
    const page = await api('GET', '/v1/jobs?limit=100');
    for (const job of page.jobs) merge(job);
    scheduleRender();
  }

  async function loadPlugins() {
    const { plugins } = await api('GET', '/v1/plugins');
    const select = $('[name=type]');
    for (const plugin of plugins) {
      if (![...select.options].some((o) => o.value === plugin.name)) {
        select.append(el('option', { value: plugin.name, text: plugin.name, title: plugin.description || '' }));
      }
    }
  }

  async function loadQueues() {
    try {
      const { queues } = await api('GET', '/v1/queues');
      renderQueues(queues);
    } catch (error) {
      const text = error.status === 403 ? 'queue figures need an admin key' : `could not read queues: ${error.message}`;
      $('#queue-rows').replaceChildren(el('tr', {}, el('td', { text })));
    }
  }

  // The newest batches with their mean progress and counts (`GET /v1/batches`).
  async function loadBatches() {
    try {
      const { batches } = await api('GET', '/v1/batches?limit=10');
      const rows = batches.map((b) => {
        const c = b.counts;
        const counts = [['waiting', c.waiting], ['queued', c.queued], ['running', c.running], ['completed', c.completed], ['failed', c.failed], ['cancelled', c.cancelled]]
          .filter(([, n]) => n).map(([name, n]) => `${n} ${name}`).join(', ');
        return el('tr', { 'data-testid': 'batch', 'data-batch': b.id, 'data-finished': b.finished_at ? 'yes' : 'no' },
          el('td', {}, el('code', { text: `…${b.id.slice(-8)}`, title: b.id })), el('td', { text: b.type }),
          el('td', {}, el('progress', { max: '100', value: String(b.progress), title: `${b.progress}%` }), el('span', { class: 'stage', text: ` ${b.progress}%`, 'data-testid': 'batch-progress' })),
          el('td', { text: `${b.total}: ${counts || 'none left'}`, 'data-testid': 'batch-counts' }),
          el('td', { text: b.created_at }));
      });
      $('#batch-rows').replaceChildren(...(rows.length ? rows : [el('tr', {}, el('td', { text: 'no batches', colspan: '5' }))]));
    } catch (error) {
      $('#batch-rows').replaceChildren(el('tr', {}, el('td', { text: `could not read batches: ${error.message}`, colspan: '5' })));
    }
  }

  // The schedules (`GET /v1/schedules`, admin): when each runs next and what its latest
  // tick submitted.
  async function loadSchedules() {
    const body = $('#schedule-rows');
    try {
      const { schedules } = await api('GET', '/v1/schedules');
      const rows = schedules.map((s) => el('tr', { 'data-testid': 'schedule', 'data-schedule': s.name },
        el('td', { text: s.name }), el('td', { text: `${s.cron} (${s.timezone || 'UTC'})` }), el('td', { text: s.type }),
        el('td', { text: s.next_run_at || '–', 'data-testid': 'schedule-next' }),
        el('td', s.last_error ? { text: `error: ${s.last_error}`, class: 'status-failed' }
          : { text: s.last_job ? `…${s.last_job.slice(-8)}` : '–', title: s.last_job || '', 'data-testid': 'schedule-last-job' })));
      body.replaceChildren(...(rows.length ? rows : [el('tr', {}, el('td', { text: 'no schedules', colspan: '5' }))]));
    } catch (error) {
      const text = error.status === 403 ? 'schedules need an admin key' : `could not read schedules: ${error.message}`;
      body.replaceChildren(el('tr', {}, el('td', { text, colspan: '5' })));
    }
  }

  // The nodes serving the store (several when they share a PostgreSQL database): which
  // one leads, which one answered, and which stopped answering.
  async function loadNodes() {
    try {
      const { nodes } = await api('GET', '/v1/nodes');
      $('#node-rows').replaceChildren(...nodes.map((n) => {
        const marks = [n.leader ? 'leader' : '', n.this_node ? 'this node' : ''].filter(Boolean);
        const name = `…${n.id.slice(-8)}${marks.length ? ` (${marks.join(', ')})` : ''}`;
        return el('tr', { 'data-testid': 'node', 'data-node': n.id, 'data-status': n.status },
          el('td', { text: name, title: n.id }), el('td', { text: n.address }),
          el('td', { text: n.status }), el('td', { text: String(n.running_jobs) }),
          el('td', { text: n.last_heartbeat_at }));
      }));
    } catch (error) {
      const text = error.status === 403 ? 'nodes need an admin key' : `could not read nodes: ${error.message}`;
      $('#node-rows').replaceChildren(el('tr', {}, el('td', { text, colspan: '5' })));
    }
  }

  // ---- live stream --------------------------------------------------------------------

  function setConnection(state, text) {
    const badge = $('[data-testid=conn-state]');
    badge.dataset.state = state;
    badge.textContent = text || state;
  }

  // The live stream of every job's events. On a network error EventSource reconnects by
  // itself and sends Last-Event-ID (the last event's global `id`), and the server replays
  // what happened meanwhile, in order: nothing is reloaded. Only when the stream is closed
  // for good (`410 events_expired`: the missed events are no longer retained; `401`; any
  // other refusal) does the page open a fresh stream and then read the job list again
  // (stream first, so nothing between the two is missed; `merge` reconciles them).
  let retryDelay = 2000;
  function connect() {
    const source = new EventSource('/v1/events');
    let opened = false;
    let lastSeen = ''; // the last event's id
    source.onopen = () => {
      setConnection('live');
      retryDelay = 2000;
      // A reconnect with no event seen yet has no position to resume from.
      if (!opened || !lastSeen) {
        loadJobs().then(() => { window.kilnDashboard.jobsLoaded = true; }, (e) => {
          if (e.status === 401) {
            source.close();
            showLogin();
          } else notice(`reloading jobs: ${e.message}`, true);
        });
      }
      opened = true;
    };
    source.onerror = () => {
      if (source.readyState === EventSource.CLOSED) {
        setConnection('closed', 'disconnected, retrying…');
        setTimeout(connect, retryDelay);
        retryDelay = Math.min(retryDelay * 2, 30000);
      } else {
        setConnection('connecting', 'reconnecting…');
      }
    };
    for (const name of EVENT_NAMES) {
      source.addEventListener(name, (m) => {
        if (m.lastEventId) lastSeen = m.lastEventId;
        onEvent(name, m);
      });
    }
  }

  // ---- actions ------------------------------------------------------------------------

  async function act(action, id) {
    try {
      switch (action) {
        case 'cancel':
          merge(await api('POST', `/v1/jobs/${id}/cancel`));
          notice(`Cancelled job ${idEnd(id)}.`);
          break;
        case 'retry':
          merge(await api('POST', `/v1/jobs/${id}/retry`));
          notice(`Job ${idEnd(id)} queued again.`);
          break;
        case 'bulk-retry': {
          const body = { status: 'failed' };
          const type = $('[name=type]').value;
          if (type) body.type = type;
          if (!window.confirm(`Retry every failed ${type || ''} job?`)) return;
          const answer = await api('POST', '/v1/jobs/bulk/retry', body);
          notice(`Retried ${answer.retried} job(s).`);
          break;
        }
        case 'bulk-cancel': {
          const body = { status: 'running', older_than_s: thresholdSecs() };
          const type = $('[name=type]').value;
          if (type) body.type = type;
          if (!window.confirm(`Cancel every ${type || ''} job running for more than ${body.older_than_s} s?`)) return;
          const answer = await api('POST', '/v1/jobs/bulk/cancel', body);
          notice(`Cancelled ${answer.cancelled} job(s).`);
          break;
        }
        case 'close-detail':
          closeDetail();
          break;
        default:
          return;
      }
    } catch (error) {
      notice(error.message, true);
    }
    scheduleRender();
  }

  // ---- job detail ---------------------------------------------------------------------

  // What a job waits for, e.g. "…1a2b3c4d, …5e6f7a8b: waiting for …5e6f7a8b".
  function dependenciesText(job) {
    const ids = job.depends_on || [];
    if (!ids.length) return '';
    const short = (id) => `…${id.slice(-8)}`;
    const waiting = job.waiting_for || [];
    const state = waiting.length ? `waiting for ${waiting.map(short).join(', ')}` : 'all ended';
    const policy = job.on_dependency_failure === 'run' ? ' (runs even if one fails)' : '';
    return `${ids.map(short).join(', ')}: ${state}${policy}`;
  }

  // A job's webhook and how its delivery goes, e.g. "https://… (delivered, 1 attempt, 200)".
  function webhookText(webhook) {
    if (!webhook) return '';
    const d = webhook.delivery;
    if (!d) return `${webhook.url} (when it ends)`;
    const parts = [d.state.replace('_', ' '), `${d.attempts} attempt${d.attempts === 1 ? '' : 's'}`];
    if (d.last_status) parts.push(String(d.last_status));
    if (d.state !== 'delivered' && d.last_error) parts.push(d.last_error);
    if (d.next_attempt_at) parts.push(`next ${d.next_attempt_at}`);
    return `${webhook.url} (${parts.join(', ')})`;
  }

  function closeDetail() {
    if (detail && detail.source) detail.source.close();
    detail = null;
    $('#detail').hidden = true;
    scheduleRender();
  }

  // Shows one job: its fields from the job map, and its whole event log from
  // GET /v1/jobs/{id}/events (replayed from the start, then live until it ends). Token
  // events are folded into one text per label (see `applyToken`) instead of one log row
  // each, so the status, progress and partial events stay in view.
  function openDetail(id) {
    if (detail && detail.id === id) return;
    closeDetail();
    const source = new EventSource(`/v1/jobs/${id}/events`);
    detail = { id, source, events: [], shown: 0, tokens: new Map(), tokenEvents: 0, tokensChanged: true };
    const current = detail;
    for (const name of EVENT_NAMES) {
      source.addEventListener(name, (m) => {
        if (detail !== current) return;
        let data = null;
        try { data = JSON.parse(m.data); } catch { data = m.data; }
        const event = { id: Number(m.lastEventId), name, data };
        if (name === 'token') applyToken(current, data);
        else if (name === 'status' && data && data.status === 'running') startAttempt(current);
        if (name !== 'token' || (data && data.reset)) current.events.push(event);
        if (TERMINAL.has(name)) source.close();
        scheduleRender();
      });
    }
    const section = $('#detail');
    for (const name of ['events', 'partials', 'tokens']) $(`[data-field=${name}]`, section).replaceChildren();
    section.hidden = false;
    pendingRefresh.add(id);
    flushRefreshes();
    scheduleRender();
  }

  // A token event `{label, delta}` adds to the label's text; with `reset: true` the text
  // streamed so far under that label is void (the LLM call failed part way) and starts over.
  function applyToken(view, data) {
    if (!data || typeof data.label !== 'string') return;
    view.tokenEvents += 1;
    const text = data.reset ? '' : (view.tokens.get(data.label) || '') + (data.delta || '');
    view.tokens.set(data.label, text);
    view.tokensChanged = true;
  }

  // A `running` status starts an attempt: the text streamed by an earlier one is void.
  function startAttempt(view) {
    view.tokens.clear();
    view.tokensChanged = true;
  }

  function actionButtons(job) {
    const buttons = [];
    if (!TERMINAL.has(job.status)) {
      buttons.push(el('button', { type: 'button', 'data-action': 'cancel', 'data-testid': 'cancel-button', 'data-job-id': job.id, text: 'Cancel' }));
    }
    if (job.status === 'failed' || job.status === 'cancelled') {
      buttons.push(el('button', { type: 'button', 'data-action': 'retry', 'data-testid': 'retry-button', 'data-job-id': job.id, text: 'Retry' }));
    }
    return buttons;
  }

  function renderDetail() {
    const section = $('#detail');
    if (!detail) return;
    const job = jobs.get(detail.id) || { id: detail.id };
    const field = (name) => $(`[data-field=${name}]`, section);
    const id = field('id');
    id.textContent = job.id;
    id.dataset.copy = job.id;
    id.title = 'click to copy';
    field('type').textContent = job.type || '';
    const status = field('status');
    status.textContent = job.status || '';
    status.className = `status status-${job.status}`;
    field('message').textContent = job.message || '';
    field('attempt').textContent = job.attempt ? `${job.attempt} of ${job.max_attempts || '?'}` : '';
    field('queue').textContent = job.concurrency_key ? `${job.queue || ''}, key ${job.concurrency_key}` : job.queue || '';
    field('created_at').textContent = job.created_at || '';
    const u = job.usage;
    field('usage').textContent = u
      ? `${u.llm_calls} LLM calls, ${u.input_tokens} input + ${u.output_tokens} output tokens${u.replayed_calls ? `, ${u.replayed_calls} replayed` : ''}`
      : '';
    field('error').textContent = job.error ? `${job.error.kind}: ${job.error.message}` : '';
    field('dependencies').textContent = dependenciesText(job);
    field('webhook').textContent = webhookText(job.webhook);
    field('result').textContent = json(job.result);
    const actions = field('actions');
    const wanted = actionButtons(job);
    if (actions.childElementCount !== wanted.length || [...actions.children].some((b, i) => b.dataset.action !== wanted[i].dataset.action)) {
      actions.replaceChildren(...wanted);
    }
    // Append only what is new, keeping the log bounded.
    const log = field('events');
    for (; detail.shown < detail.events.length; detail.shown++) {
      const e = detail.events[detail.shown];
      const text = typeof e.data === 'string' ? e.data : JSON.stringify(e.data);
      log.append(el('tr', { 'data-testid': 'detail-event', 'data-event': e.name }, el('td', { text: String(e.id) }), el('td', { text: e.name }), el('td', { text: text.length > 300 ? `${text.slice(0, 300)}…` : text })));
      if (e.name === 'partial') {
        field('partials').append(el('li', {}, el('strong', { text: e.data.name }), el('pre', { text: json(e.data.data) })));
      }
    }
    detail.events.splice(0, Math.max(0, detail.events.length - MAX_LOG_ROWS));
    detail.shown = detail.events.length;
    while (log.childElementCount > MAX_LOG_ROWS) log.firstElementChild.remove();
    if (detail.tokensChanged) renderTokens(field('tokens'), field('token-count'));
  }

  // One folded line per label: the label and the end of its text; open it for all of it.
  // Nodes are updated in place, so a label the user opened stays open as text streams in.
  function renderTokens(box, count) {
    detail.tokensChanged = false;
    count.textContent = detail.tokenEvents ? `${detail.tokenEvents} token events` : '';
    const have = new Map([...box.children].map((node) => [node.dataset.label, node]));
    for (const [label, node] of have) if (!detail.tokens.has(label)) node.remove();
    for (const [label, text] of detail.tokens) {
      let node = have.get(label);
      if (!node) {
        node = el('details', { 'data-testid': 'token-label', 'data-label': label },
          el('summary', {}, el('code', { text: label }), ' ', el('span', { class: 'tail' })), el('pre', {}));
        box.append(node);
      }
      const tail = text.length > 120 ? `…${text.slice(-120)}` : text;
      const summary = $('.tail', node);
      if (summary.textContent !== tail) summary.textContent = tail;
      const whole = $('pre', node);
      if (whole.textContent !== text) whole.textContent = text;
    }
  }

  // ---- rendering ----------------------------------------------------------------------

  function scheduleRender() {
    if (renderQueued) return;
    renderQueued = true;
    setTimeout(() => {
      renderQueued = false;
      render();
    }, 30);
  }

  const byNewest = (a, b) => (a.id < b.id ? 1 : a.id > b.id ? -1 : 0); // UUIDv7: time order

  function visibleJobs() {
    const status = $('[name=status]').value;
    const type = $('[name=type]').value;
    const since = Number($('[name=since]').value);
    const after = since ? Date.now() - since * 1000 : -Infinity;
    return [...jobs.values()]
      .filter((j) => (!status || j.status === status) && (!type || j.type === type) && !(ms(j.created_at) < after))
      .sort(byNewest)
      .slice(0, MAX_ROWS);
  }

  function makeRow(job) {
    const row = el('tr', { 'data-testid': 'job-row', 'data-job-id': job.id },
      el('td', {}, idCode(job.id)),
      el('td', { 'data-testid': 'job-type' }),
      el('td', {}, el('span', { 'data-testid': 'job-status' })),
      el('td', {}, el('progress', { max: '100', value: '0', 'data-testid': 'job-progress' }), el('span', { class: 'stage', 'data-testid': 'job-message' })),
      el('td', { 'data-testid': 'job-age' }),
      el('td', { 'data-testid': 'job-runtime' }),
      el('td', { class: 'actions' }));
    rows.set(job.id, row);
    return row;
  }

  function updateRow(row, job) {
    const set = (selector, text) => {
      const node = $(selector, row);
      if (node.textContent !== text) node.textContent = text;
    };
    row.dataset.status = job.status;
    set('[data-testid=job-type]', job.type || '');
    const status = $('[data-testid=job-status]', row);
    status.className = `status status-${job.status}`;
    set('[data-testid=job-status]', job.status);
    const bar = $('[data-testid=job-progress]', row);
    if (bar.value !== job.progress) bar.value = job.progress || 0;
    bar.title = `${job.progress || 0}%`;
    const stage = job.status === 'failed' && job.error ? `${job.error.kind}: ${job.error.message}` : job.message || '';
    set('[data-testid=job-message]', stage);
    set('[data-testid=job-age]', duration(Date.now() - ms(job.created_at)));
    set('[data-testid=job-runtime]', duration(runMillis(job)));
    row.classList.toggle('long', job.status === 'running' && runMillis(job) > thresholdSecs() * 1000);
    row.classList.toggle('selected', Boolean(detail && detail.id === job.id));
    const cell = $('td.actions', row);
    const wanted = actionButtons(job);
    const have = [...cell.children].map((b) => b.dataset.action).join();
    if (have !== wanted.map((b) => b.dataset.action).join()) cell.replaceChildren(...wanted);
  }

  function renderJobs() {
    const body = $('#job-rows');
    const list = visibleJobs();
    const wanted = list.map((job) => {
      const row = rows.get(job.id) || makeRow(job);
      updateRow(row, job);
      return row;
    });
    const current = [...body.children];
    if (current.length !== wanted.length || current.some((row, i) => row !== wanted[i])) {
      body.replaceChildren(...wanted); // moves the same nodes: no row is recreated
    }
    $('#no-jobs').hidden = wanted.length > 0;
  }

  function renderSummary() {
    const counts = Object.fromEntries(STATUSES.map((s) => [s, 0]));
    const byType = new Map();
    for (const job of jobs.values()) {
      counts[job.status] = (counts[job.status] || 0) + 1;
      if (!byType.has(job.type)) byType.set(job.type, Object.fromEntries(STATUSES.map((s) => [s, 0])));
      byType.get(job.type)[job.status] += 1;
    }
    for (const status of STATUSES) {
      const n = $(`[data-testid=card-${status}] .n`);
      if (n.textContent !== String(counts[status])) n.textContent = String(counts[status]);
    }
    $('#type-rows').replaceChildren(...[...byType.keys()].sort().map((type) =>
      el('tr', { 'data-testid': 'type-row', 'data-type': type }, el('td', { text: type }),
        ...STATUSES.map((s) => el('td', { class: byType.get(type)[s] ? `status-${s}` : '', text: String(byType.get(type)[s]) })))));

    const threshold = thresholdSecs() * 1000;
    const long = [...jobs.values()].filter((j) => j.status === 'running' && runMillis(j) > threshold)
      .sort((a, b) => runMillis(b) - runMillis(a));
    $('#long-running').replaceChildren(...(long.length
      ? long.slice(0, 30).map((j) => el('li', { 'data-job-id': j.id, 'data-testid': 'long-running-job' },
        idCode(j.id), ` ${j.type} running for ${duration(runMillis(j))} — ${j.progress || 0}% ${j.message || ''}`))
      : [el('li', { class: 'empty', text: `Nothing running longer than ${thresholdSecs()} s.` })]));

    const failed = [...jobs.values()].filter((j) => j.status === 'failed').sort(byNewest);
    $('#failures').replaceChildren(...(failed.length
      ? failed.slice(0, 30).map((j) => el('li', { 'data-job-id': j.id, 'data-testid': 'failure' },
        idCode(j.id), ` ${j.type} `,
        el('span', { class: 'status-failed', text: j.error ? `${j.error.kind}: ${j.error.message}` : 'failed' })))
      : [el('li', { class: 'empty', text: 'No failed jobs.' })]));

    $('#activity').replaceChildren(...activity.map((a) => el('li', { 'data-job-id': a.id },
      `${new Date(a.at).toLocaleTimeString()} `, idCode(a.id), ` ${a.type} `,
      el('span', { class: `status-${a.name === 'status' ? a.text.split(' ')[0] : a.name}`, text: a.text }))));
  }

  function formatCell(key, value) {
    if (value === null || value === undefined) return el('td', { text: '—' });
    if (key === 'health') {
      const level = typeof value === 'string' ? value : value.status || value.level || '';
      const why = typeof value === 'object' ? value.reason || value.reasons || '' : '';
      return el('td', { class: `health-${level}`, title: typeof why === 'string' ? why : JSON.stringify(why), text: level || JSON.stringify(value) });
    }
    if (typeof value === 'number' && key.endsWith('_rate')) return el('td', { text: `${(value * 100).toFixed(1)}%` });
    if (typeof value === 'number' && key.endsWith('_ms')) return el('td', { text: `${value} ms` });
    if (Array.isArray(value)) return el('td', { text: value.length ? value.map(String).join('; ') : '—' });
    if (typeof value === 'object') return el('td', { text: JSON.stringify(value) });
    return el('td', { text: String(value) });
  }

  // Shows whatever fields /v1/queues has, one row per field and one column per queue
  // (health first), so the table fits the side column; nested figures (`recent`) get a
  // row each. With many queues it scrolls sideways inside its box.
  function renderQueues(queues) {
    const keys = [];
    for (const key of ['health', 'health_reasons']) if (queues.some((q) => key in q)) keys.push(key);
    for (const q of queues) {
      for (const [key, value] of Object.entries(q)) {
        const sub = value && typeof value === 'object' && !Array.isArray(value) ? Object.keys(value).map((k) => `${key}.${k}`) : [key];
        for (const k of sub) if (k !== 'name' && !keys.includes(k)) keys.push(k);
      }
    }
    const pick = (q, key) => key.split('.').reduce((v, k) => (v === null || v === undefined ? v : v[k]), q);
    $('#queue-head').replaceChildren(el('tr', {}, el('th', {}),
      ...queues.map((q) => el('th', { 'data-testid': 'queue-name', 'data-queue': q.name, text: q.name }))));
    $('#queue-rows').replaceChildren(...keys.map((key) =>
      el('tr', { 'data-testid': 'queue-field', 'data-field': key }, el('th', { text: key.replace(/[._]/g, ' ') }),
        ...queues.map((q) => formatCell(key, pick(q, key))))));
  }

  function render() {
    renderJobs();
    renderSummary();
    renderDetail();
  }

  // ---- start --------------------------------------------------------------------------

  // With API keys configured, the dashboard signs in once: the key is traded for an
  // HttpOnly session cookie (POST /v1/session) and never kept by this page.
  function showLogin() {
    const form = $('#login');
    form.hidden = false;
    setConnection('closed', 'signed out');
    form.addEventListener('submit', async (e) => {
      e.preventDefault();
      const key = form.elements.key.value.trim();
      const response = await fetch('/v1/session', { method: 'POST', headers: { authorization: `Bearer ${key}` } });
      if (response.ok) location.reload();
      else notice('that key was not accepted', true);
    });
  }

  function start() {
    // For tests and debugging: `loaded` turns true once the job list and job types are read.
    window.kilnDashboard = {
      jobs,
      get loaded() { return Boolean(this.jobsLoaded && this.setup); },
    };
    api('GET', '/v1/plugins').then(run, (error) => {
      if (error.status === 401) showLogin();
      else run();
    });
  }

  function run() {
    $('#job-rows').addEventListener('click', (e) => {
      if (e.target.closest('[data-copy]')) return; // copied by the handler below, not opened
      const button = e.target.closest('button[data-action]');
      if (button) {
        e.stopPropagation();
        act(button.dataset.action, button.dataset.jobId);
        return;
      }
      const row = e.target.closest('tr[data-job-id]');
      if (row) openDetail(row.dataset.jobId);
    });
    document.body.addEventListener('click', (e) => {
      const copy = e.target.closest('[data-copy]');
      if (copy) {
        copyText(copy.dataset.copy, copy);
        return;
      }
      const button = e.target.closest('button[data-action]');
      if (button && !button.closest('#job-rows')) act(button.dataset.action, button.dataset.jobId);
    });
    const threshold = $('[name=threshold]');
    threshold.value = localStorage.getItem('kiln.threshold') || threshold.value;
    threshold.addEventListener('change', () => localStorage.setItem('kiln.threshold', threshold.value));
    $('.filters').addEventListener('input', scheduleRender);
    $('.filters').addEventListener('submit', (e) => e.preventDefault());

    connect(); // reads the job list once its stream is open, so nothing is missed
    Promise.all([loadPlugins(), loadQueues(), loadNodes(), loadBatches(), loadSchedules()])
      .then(() => { window.kilnDashboard.setup = true; })
      .catch((e) => notice(`loading: ${e.message}`, true));
    setInterval(loadQueues, 5000); // queue figures only; job state comes from events
    setInterval(loadNodes, 5000);
    setInterval(loadSchedules, 5000);
    setInterval(loadBatches, 2000); // their progress moves quickly
    setInterval(() => {
      // A webhook delivery, and a waiting job's list of dependencies still to end, move on
      // without events: reread the open job while either is pending.
      const open = detail && jobs.get(detail.id);
      if (open && open.webhook && open.webhook.delivery && open.webhook.delivery.state === 'pending') pendingRefresh.add(open.id);
      if (open && open.status === 'waiting') pendingRefresh.add(open.id);
      flushRefreshes();
    }, 1000);
    setInterval(() => { if (jobs.size) scheduleRender(); }, 1000); // ages and run times
  }

  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', start);
  else start();
})();
