// The operator console. Plain JS, no framework, no CDN: the page holds no data, every view is fetched from the
// operate API with the function key, which lives only in this tab's sessionStorage (never a URL, a cookie or
// a log: nothing here writes to the browser console). Text from the API is always set as text, never as HTML.
'use strict';

(function () {
  const KEY_STORE = 'segment-console.function-key';
  // The page is served at <prefix>/console; the API routes sit beside it under the same prefix (`/api`).
  const API = window.location.pathname.replace(/\/console(\/.*)?$/, '');
  const ACTIVE = ['queued', 'running'];
  const CHART_RUNS = 30;
  const MAX_PAGE = 100;  // the API's largest `limit` (shared/service/history.py MAX_LIMIT)
  const SERIES = [
    ['exported', 'Exported', 'exported'],
    ['unchanged_skipped', 'Unchanged', 'unchanged'],
    ['rejected_count', 'Rejected', 'rejected'],
    ['removed_from_list', 'Removed', 'removed'],
  ];
  const OUTCOMES = [  // what `balanced` checks: rows read = the sum of these
    ['exported', 'Exported'], ['unchanged_skipped', 'Unchanged (skipped)'], ['rejected_count', 'Rejected'],
    ['duplicates_merged', 'Duplicates merged'], ['in_failed_jobs', 'In failed import jobs'],
    ['pending', 'Pending import jobs'], ['not_sent', 'Not sent'], ['suppressed', 'Suppressed (erased people)'],
  ];
  const SVG = 'http://www.w3.org/2000/svg';
  let generation = 0;  // a view started later wins: an older one's late answers are dropped

  // -- small helpers ---------------------------------------------------------------------------------------

  function h(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (name === 'class') node.className = value;
      else if (name === 'text') node.textContent = value;
      else if (name.startsWith('on')) node.addEventListener(name.slice(2), value);
      else node.setAttribute(name, value === true ? '' : String(value));
    }
    for (const child of children.flat(Infinity)) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  // replaceChildren, with the same nesting and null-skipping as h().
  function fill(node, ...children) {
    node.replaceChildren(...children.flat(Infinity).filter((c) => c !== null && c !== undefined && c !== false));
  }

  function svg(tag, attrs, ...children) {
    const node = document.createElementNS(SVG, tag);
    for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, String(value));
    for (const child of children) node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    return node;
  }

  const num = (value) => (typeof value === 'number' ? value.toLocaleString('en') : '–');

  function when(iso) {
    if (!iso) return h('span', { class: 'muted' }, '–');
    const date = new Date(iso);
    const text = Number.isNaN(date.getTime()) ? iso : date.toISOString().replace('T', ' ').replace(/\.\d+Z$/, ' UTC').replace(/Z$/, ' UTC');
    return h('time', { datetime: iso }, text);
  }

  function badge(status) {
    const value = status || 'never run';
    return h('span', { class: `badge badge-${value.replace(/[^a-z_]/g, '') || 'none'}`, 'data-status': value },
      value.replace('_', ' '));
  }

  const runLink = (runId) => h('a', { href: `#/runs/${encodeURIComponent(runId)}`, class: 'run-id' }, runId);

  function table(caption, columns, rows, attrs) {
    const head = h('tr', null, columns.map((c) => h('th', { scope: 'col', class: c.num ? 'num' : null }, c.label)));
    const body = rows.map((row) => h('tr', null, columns.map((c, i) => {
      const value = c.value(row);
      const cell = i === 0 && c.rowHeader ? 'th' : 'td';
      return h(cell, { class: c.num ? 'num' : null, 'data-field': c.field || null, 'data-label': c.label, scope: cell === 'th' ? 'row' : null },
        typeof value === 'number' ? num(value) : value);
    })));
    return h('div', { class: 'table-wrap', ...(attrs || {}) },
      h('table', null, h('caption', null, caption), h('thead', null, head), h('tbody', null, body)));
  }

  function definitions(pairs) {
    return h('dl', { class: 'facts' }, pairs.filter(Boolean).map(([term, value]) => [h('dt', null, term), h('dd', null, value)]));
  }

  // -- messages and the key ---------------------------------------------------------------------------------

  function showMessage(text, kind) {
    const box = document.getElementById('message');
    box.textContent = text;
    box.className = `message message-${kind || 'error'}`;
    box.hidden = false;
  }

  function clearMessage() {
    const box = document.getElementById('message');
    box.hidden = true;
    box.textContent = '';
  }

  const getKey = () => window.sessionStorage.getItem(KEY_STORE);

  function showKeyForm() {
    document.getElementById('view').replaceChildren();
    document.getElementById('key-view').hidden = false;
    document.getElementById('forget-key').hidden = true;
    document.getElementById('key-input').focus();
  }

  class ApiError extends Error {
    constructor(status, message, data) {
      super(message);
      this.status = status;
      this.data = data;
    }
  }

  // Every call: the key in the x-functions-key header, nothing in the URL, no cookies sent.
  async function api(path, { method = 'GET', body, accept = [], raw = false } = {}) {
    const key = getKey();
    if (!key) throw new ApiError(0, 'Enter the function key to continue.');
    const headers = { 'x-functions-key': key, Accept: raw ? 'text/csv' : 'application/json' };
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    let response;
    try {
      response = await fetch(API + path, {
        method, headers, body: body === undefined ? undefined : JSON.stringify(body),
        cache: 'no-store', credentials: 'omit', referrerPolicy: 'no-referrer',
      });
    } catch (error) {
      throw new ApiError(0, 'The API could not be reached (network error); check the connection and try again.');
    }
    if (response.status === 401 || response.status === 403) {
      window.sessionStorage.removeItem(KEY_STORE);
      throw new ApiError(401, `That key was refused (HTTP ${response.status}): it is not a valid function key for this app. Enter the key again.`);
    }
    if (raw && response.ok) return { status: response.status, response };
    const text = await response.text();
    let data = null;
    try { data = text ? JSON.parse(text) : null; } catch (error) { data = null; }
    if (!response.ok && !accept.includes(response.status)) {
      const reason = data && typeof data.error === 'string' ? data.error : `the API answered HTTP ${response.status}`;
      throw new ApiError(response.status, reason, data);
    }
    return { status: response.status, data };
  }

  function failed(error) {
    if (error instanceof ApiError && (error.status === 401 || !getKey())) {
      showKeyForm();
      showMessage(error.message, 'error');
      return;
    }
    showMessage(error instanceof ApiError ? `Could not load: ${error.message}` : `Unexpected error: ${error.message}`, 'error');
  }

  // -- views -----------------------------------------------------------------------------------------------

  function countsLine(counts) {
    if (!counts) return h('span', { class: 'muted' }, 'no counts yet');
    return h('span', { class: 'counts' }, SERIES.map(([field, label]) =>
      h('span', { class: 'count' }, h('strong', { 'data-field': field }, num(counts[field])), ` ${label.toLowerCase()}`)));
  }

  function destinationCard(d) {
    const title = d.display_name || d.name;
    const last = d.last_run;
    const consent = d.consent ? [d.consent.by || '–', ' on ', when(d.consent.at)] : h('span', { class: 'warn' }, 'not recorded: exports are refused');
    const files = h('ul', { class: 'files' }, (d.segments || []).map((s) => h('li', null,
      h('code', null, s.name), ': ',
      s.current_file ? [h('code', { class: 'blob' }, s.current_file.blob), ' (', when(s.current_file.last_modified), ')']
        : h('span', { class: 'muted' }, 'no file yet'))));
    return h('article', { class: 'card destination', 'data-destination': d.name, 'aria-labelledby': `dest-${d.name}` },
      h('div', { class: 'card-head' },
        h('h2', { id: `dest-${d.name}` }, h('a', { href: `#/destinations/${encodeURIComponent(d.name)}` }, title)),
        badge(last && last.status)),
      definitions([
        ['Name', h('code', null, d.name)], ['Mode', d.mode], ['SendGrid list', h('code', null, d.list_id)],
        ['Consent', consent], ['Current files', files],
        ['Last run', last ? [runLink(last.run_id), h('br'), 'started ', when(last.started), ', finished ', when(last.finished)]
          : h('span', { class: 'muted' }, 'none yet')],
        last ? ['Last counts', countsLine(last.counts)] : null,
      ]));
  }

  async function viewDestinations(view, token) {
    const { data } = await api('/destinations');
    if (token !== generation) return;
    const list = data.destinations || [];
    document.title = 'Destinations: segment exports console';
    fill(view, h('h1', null, 'Destinations'),
      list.length ? h('div', { class: 'cards' }, list.map(destinationCard))
        : h('p', null, 'No destinations are configured (DESTINATIONS_JSON).'));
  }

  function chart(runs) {
    const shown = runs.slice(0, CHART_RUNS).reverse();  // oldest on the left
    const width = 1000; const height = 200; const left = 44; const bottom = 22; const top = 8;
    const totals = shown.map((r) => SERIES.reduce((sum, [f]) => sum + ((r.counts || {})[f] || 0), 0));
    const max = Math.max(1, ...totals);
    const slot = (width - left) / CHART_RUNS;
    const barWidth = Math.max(4, slot * 0.7);
    const root = svg('svg', { viewBox: `0 0 ${width} ${height}`, class: 'chart', role: 'img', 'aria-labelledby': 'chart-title chart-desc' },
      svg('title', { id: 'chart-title' }, `Last ${shown.length} runs`),
      svg('desc', { id: 'chart-desc' }, 'Stacked bars per run, oldest on the left: exported, unchanged, rejected and removed contacts. The table below has the same numbers.'),
      svg('line', { x1: left, y1: top, x2: left, y2: height - bottom, class: 'axis' }),
      svg('line', { x1: left, y1: height - bottom, x2: width, y2: height - bottom, class: 'axis' }),
      svg('text', { x: left - 6, y: top + 10, 'text-anchor': 'end', class: 'tick' }, num(max)),
      svg('text', { x: left - 6, y: height - bottom, 'text-anchor': 'end', class: 'tick' }, '0'),
      svg('text', { x: left, y: height - 4, class: 'tick' }, `← older (${CHART_RUNS} runs)`),
      svg('text', { x: width, y: height - 4, 'text-anchor': 'end', class: 'tick' }, 'newest →'));
    shown.forEach((run, i) => {
      const group = svg('g', { class: 'bar', 'data-run': run.run_id },
        svg('title', null, `${run.run_id} (${run.status}): ` + SERIES.map(([f, label]) => `${label} ${num((run.counts || {})[f] || 0)}`).join(', ')));
      let y = height - bottom;
      for (const [field, , css] of SERIES) {
        const value = (run.counts || {})[field] || 0;
        if (!value) continue;
        const size = (value / max) * (height - bottom - top);
        y -= size;
        group.append(svg('rect', { x: left + (CHART_RUNS - shown.length + i) * slot + (slot - barWidth) / 2, y, width: barWidth, height: Math.max(size, 1), class: `series-${css}` }));
      }
      root.append(group);
    });
    const legend = h('ul', { class: 'legend' }, SERIES.map(([, label, css]) => h('li', null, h('span', { class: `swatch series-${css}`, 'aria-hidden': 'true' }), label)));
    return h('figure', { class: 'chart-box' }, root, legend);
  }

  function historyTable(runs) {
    const c = (field, label) => ({ label, field, num: true, value: (r) => (r.counts || {})[field] });
    return table('Runs, newest first', [
      { label: 'Run', value: (r) => runLink(r.run_id), rowHeader: true },
      { label: 'Status', field: 'status', value: (r) => badge(r.status) },
      { label: 'Started by', field: 'triggered_by', value: (r) => [r.triggered_by || '–', r.dry_run ? ' (preview)' : '', r.full ? ' (full)' : ''].join('') },
      { label: 'Started', value: (r) => when(r.started) },
      c('rows_read', 'Read'), c('exported', 'Exported'), c('unchanged_skipped', 'Unchanged'),
      c('rejected_count', 'Rejected'), c('removed_from_list', 'Removed'),
    ], runs, { id: 'history' });
  }

  async function viewDestination(view, token, name) {
    const [{ data: all }, { data: page }] = await Promise.all([
      api('/destinations'), api(`/destinations/${encodeURIComponent(name)}/runs?limit=${CHART_RUNS}`)]);
    if (token !== generation) return;
    const d = (all.destinations || []).find((x) => x.name === name);
    if (!d) throw new ApiError(404, `there is no destination named ${name}`);
    document.title = `${d.display_name || d.name}: segment exports console`;
    let runs = page.runs || [];
    let next = page.next;
    const history = h('div', { id: 'history-box' });
    const more = h('button', { type: 'button', class: 'secondary', id: 'older' }, 'Show older runs');
    const latest = h('span', { id: 'latest-status' });
    const draw = () => {
      fill(history, runs.length ? [chart(runs), historyTable(runs)] : h('p', null, 'No runs yet.'));
      fill(latest, badge(runs.length ? runs[0].status : d.last_run && d.last_run.status));
      more.hidden = !next;
    };
    more.addEventListener('click', async () => {
      try {
        const { data } = await api(`/destinations/${encodeURIComponent(name)}/runs?limit=${CHART_RUNS}&before=${encodeURIComponent(next)}`);
        runs = runs.concat(data.runs || []); next = data.next; draw();
      } catch (error) { failed(error); }
    });
    const reload = async () => {
      const { data } = await api(`/destinations/${encodeURIComponent(name)}/runs?limit=${Math.min(MAX_PAGE, Math.max(CHART_RUNS, runs.length))}`);
      runs = data.runs || []; next = data.next; draw();
    };
    draw();
    fill(view,
      h('p', { class: 'crumbs' }, h('a', { href: '#/' }, 'Destinations'), ' / ', d.name),
      h('div', { class: 'title-row' }, h('h1', null, d.display_name || d.name), latest),
      actions(d, reload),
      h('section', { 'aria-labelledby': 'history-title' }, h('h2', { id: 'history-title' }, 'Run history'), history, more));
  }

  // -- actions: Export now, Preview, Full re-send --------------------------------------------------------

  function actions(d, reload) {
    const result = h('div', { id: 'action-result', class: 'action-result', 'aria-live': 'polite' });
    const buttons = [];
    const run = (label, body) => async () => {
      buttons.forEach((b) => { b.disabled = true; });
      result.setAttribute('aria-busy', 'true');
      fill(result, h('p', null, `${label}: starting…`));
      try {
        if (body.dry_run) { await preview(d, result); await reload(); }
        else await startExport(d, body, label, result, reload);
      } catch (error) {
        if (error instanceof ApiError && error.status === 401) failed(error);
        else fill(result, h('p', { class: 'message message-error', role: 'alert' }, `${label} failed: ${error.message}`));
      } finally {
        buttons.forEach((b) => { b.disabled = false; });
        result.removeAttribute('aria-busy');
      }
    };
    const make = (id, label, cls, body, help) => {
      const button = h('button', { type: 'button', id, class: cls, 'aria-describedby': `${id}-help`, onclick: run(label, body) }, label);
      buttons.push(button);
      return h('div', { class: 'action' }, button, h('p', { class: 'help', id: `${id}-help` }, help));
    };
    return h('section', { class: 'actions', 'aria-labelledby': 'actions-title' },
      h('h2', { id: 'actions-title' }, 'Actions'),
      h('div', { class: 'action-row' },
        make('export-now', 'Export now', 'primary', {}, 'Queue a run of the current files; sends only what changed.'),
        make('preview', 'Preview', 'secondary', { dry_run: true }, 'Dry run: map the current files and show the contacts and rejects; nothing is sent.'),
        make('full-resend', 'Full re-send', 'secondary', { full: true }, 'Queue a run that sends every contact again, changed or not.')),
      result);
  }

  async function startExport(d, body, label, result, reload) {
    const { data } = await api(`/destinations/${encodeURIComponent(d.name)}/exports`, { method: 'POST', body });
    const status = h('span', { id: 'action-status' }, badge(data.status));
    fill(result, h('p', { class: 'started' }, `${label}: run `, runLink(data.run_id), ' ', status));
    await reload();
    const deadline = Date.now() + 15 * 60 * 1000;
    let report = { status: data.status };
    while (ACTIVE.includes(report.status) && Date.now() < deadline) {
      await new Promise((resolve) => { window.setTimeout(resolve, 1000); });
      report = (await api(`/runs/${encodeURIComponent(data.run_id)}`)).data;
      fill(status, badge(report.status));
    }
    result.append(h('p', null, `Finished with status ${report.status}: `, countsLine(report)));
    await reload();
  }

  function contactColumns(contacts) {
    const keys = [];
    for (const contact of contacts) {
      for (const [key, value] of Object.entries(contact)) {
        const names = key === 'custom_fields' && value && typeof value === 'object' ? Object.keys(value).map((k) => `custom_fields.${k}`) : [key];
        for (const name of names) if (!keys.includes(name)) keys.push(name);
      }
    }
    return keys.map((key) => ({ label: key.replace('custom_fields.', ''), value: (c) => {
      const value = key.startsWith('custom_fields.') ? (c.custom_fields || {})[key.slice(14)] : c[key];
      return value === undefined || value === null ? '' : (typeof value === 'object' ? JSON.stringify(value) : String(value));
    } }));
  }

  async function preview(d, result) {
    const { status, data } = await api(`/destinations/${encodeURIComponent(d.name)}/exports`,
      { method: 'POST', body: { dry_run: true }, accept: [422] });
    const contacts = data.preview || [];
    const shown = contacts.slice(0, 200);
    fill(result,
      h('h3', null, 'Preview (dry run): nothing was sent'),
      h('p', { class: 'started' }, 'Run ', runLink(data.run_id), ' ', badge(data.status),
        status === 422 ? ' the input is unusable: see the notes and rejects below.' : ''),
      data.error ? h('p', { class: 'message message-error' }, data.error) : null,
      accounting(data),
      shown.length ? table(`Mapped contacts (${shown.length === contacts.length ? contacts.length : `first ${shown.length} of ${contacts.length}`})`,
        contactColumns(shown), shown, { id: 'preview-contacts' }) : h('p', null, 'No contact would be sent.'),
      rejectedRows(data, 'preview-rejects'));
  }

  // -- a run's detail --------------------------------------------------------------------------------------

  function accounting(r) {
    const rows = OUTCOMES.map(([field, label]) => ({ field, label, value: r[field] }));
    return h('div', { class: 'accounting' }, table('Where every row read went', [
      { label: 'Outcome', value: (x) => x.label, rowHeader: true },
      { label: 'Rows', num: true, value: (x) => x.value, field: 'count' },
    ], [{ field: 'rows_read', label: 'Rows read', value: r.rows_read }, ...rows].map((x) => ({ ...x })), { id: 'accounting' }),
    h('p', { class: r.balanced === false ? 'warn' : 'ok', id: 'balanced' },
      r.balanced === undefined ? 'Not finished: the accounting is checked when the run ends.'
        : r.balanced ? 'Balanced: rows read equal the sum of the outcomes.' : 'Not balanced: this is a bug; report it.'));
  }

  function rejectedRows(r, id) {
    const rows = r.rejected || [];
    if (!rows.length) return h('p', { id }, 'No row was rejected.');
    const omitted = r.rejected_details_omitted || 0;
    return table(`Rejected rows (${omitted ? `first ${rows.length} of ${r.rejected_count}` : rows.length}; values are only in the rejects file)`, [
      { label: 'Row', num: true, value: (x) => x.row, rowHeader: true },
      { label: 'File', value: (x) => h('code', null, x.source || '') },
      { label: 'Field', value: (x) => x.field }, { label: 'Column', value: (x) => x.column || '' },
      { label: 'Reason', value: (x) => x.reason },
    ], rows, { id });
  }

  async function downloadRejects(runId, button) {
    button.disabled = true;
    try {
      const { response } = await api(`/runs/${encodeURIComponent(runId)}/rejects`, { raw: true });
      const url = URL.createObjectURL(await response.blob());
      const link = h('a', { href: url, download: `${runId}-rejects.csv`, hidden: true });
      document.body.append(link);
      link.click();
      link.remove();
      window.setTimeout(() => URL.revokeObjectURL(url), 30000);
      showMessage('The rejects CSV was downloaded. It holds personal data: keep it where such data belongs.', 'info');
    } catch (error) {
      if (error instanceof ApiError && error.status === 401) failed(error);
      else showMessage(`The rejects file could not be downloaded: ${error.message}`, 'error');
    } finally {
      button.disabled = false;
    }
  }

  function byReason(r) {
    const rows = [];
    for (const [field, kinds] of Object.entries(r.rejected_by_reason || {})) {
      for (const [reason, count] of Object.entries(kinds)) rows.push({ field, reason, count });
    }
    return rows;
  }

  async function viewRun(view, token, runId) {
    const { data: r } = await api(`/runs/${encodeURIComponent(runId)}`);
    if (token !== generation) return;
    const sections = [];
    document.title = `Run ${r.run_id || runId}: segment exports console`;
    const section = (id, title, ...content) => sections.push(h('section', { 'aria-labelledby': id }, h('h2', { id }, title), ...content));
    section('accounting-title', 'Accounting', accounting(r), definitions([
      ['Removed from the list', num(r.removed_from_list)], ['Removals withheld', num(r.removals_withheld)],
      ['Requests sent', num(r.requests_sent)], ['Fields truncated', num(r.truncated_count)],
      ['Possible duplicate sends', num(r.possible_duplicate_sends)]]));
    if (r.segments && r.segments.length) {
      const c = (field, label) => ({ label, num: true, value: (s) => s[field] });
      section('segments-title', 'Segments', table('Each segment\'s part', [
        { label: 'Segment', value: (s) => h('code', null, s.segment), rowHeader: true },
        { label: 'File', value: (s) => (s.source ? h('code', { class: 'blob' }, s.source) : s.note || 'no file') },
        c('rows_read', 'Read'), c('exported', 'Exported'), c('unchanged_skipped', 'Unchanged'), c('rejected_count', 'Rejected'),
        c('duplicates_merged', 'Merged'), c('in_failed_jobs', 'Failed jobs'), c('pending', 'Pending'), c('not_sent', 'Not sent'),
        c('suppressed', 'Suppressed'),
        { label: 'Balanced', value: (s) => (s.balanced === false ? 'no' : 'yes') }], r.segments));
    }
    const download = h('button', { type: 'button', class: 'secondary', id: 'download-rejects' }, 'Download the rejects CSV');
    download.addEventListener('click', () => downloadRejects(r.run_id, download));
    section('rejects-title', `Rejects (${num(r.rejected_count || 0)})`,
      r.rejects_blob || r.rejected_count ? h('p', null, download, ' ', h('span', { class: 'help' }, 'It holds the rejected values, i.e. personal data.')) : null,
      Object.keys(r.rejected_by_field || {}).length ? table('Rejects by field', [
        { label: 'Field', value: (x) => x[0], rowHeader: true }, { label: 'Rows', num: true, value: (x) => x[1] }],
      Object.entries(r.rejected_by_field), { id: 'rejects-by-field' }) : null,
      byReason(r).length ? table('Rejects by reason', [
        { label: 'Field', value: (x) => x.field, rowHeader: true }, { label: 'Reason', value: (x) => x.reason },
        { label: 'Rows', num: true, value: (x) => x.count }], byReason(r), { id: 'rejects-by-reason' }) : null,
      rejectedRows(r, 'rejected-rows'));
    const batches = r.batches || [];
    section('batches-title', `Batches and import jobs (${batches.length})`, batches.length ? table('Batches', [
      { label: '#', num: true, value: (b) => b.number, rowHeader: true }, { label: 'Contacts', num: true, value: (b) => b.contacts },
      { label: 'Job', value: (b) => (b.job_id ? h('code', null, b.job_id) : '–') }, { label: 'Outcome', value: (b) => b.status },
      { label: 'Created', num: true, value: (b) => b.created_count }, { label: 'Updated', num: true, value: (b) => b.updated_count },
      { label: 'Errored', num: true, value: (b) => b.errored_count }, { label: 'Sent again', num: true, value: (b) => b.resent || 0 },
    ], batches, { id: 'batches' }) : h('p', null, 'No batch was sent.'));
    if ((r.notes || []).length) section('notes-title', 'Notes', h('ul', null, r.notes.map((n) => h('li', null, n))));
    fill(view,
      h('p', { class: 'crumbs' }, h('a', { href: '#/' }, 'Destinations'), ' / ',
        r.destination ? h('a', { href: `#/destinations/${encodeURIComponent(r.destination)}` }, r.destination) : '?', ' / run'),
      h('div', { class: 'title-row' }, h('h1', null, 'Run ', h('span', { class: 'run-id' }, r.run_id || runId)), badge(r.status)),
      r.error ? h('p', { class: 'message message-error' }, r.error) : null,
      definitions([
        ['Destination', r.destination || '–'], ['Mode', r.mode || '–'], ['Dry run', r.dry_run ? 'yes' : 'no'],
        ['Started', when(r.started_at)], ['Finished', when(r.finished_at)],
        ['Files', h('code', { class: 'blob' }, r.source || '–')]]),
      ...sections);
  }

  // -- routing ---------------------------------------------------------------------------------------------

  async function render() {
    const token = ++generation;
    const view = document.getElementById('view');
    if (!getKey()) { showKeyForm(); return; }
    document.getElementById('key-view').hidden = true;
    document.getElementById('forget-key').hidden = false;
    view.setAttribute('aria-busy', 'true');
    try {
      const route = window.location.hash.replace(/^#\/?/, '').split('/').map(decodeURIComponent);  // URIError on a bad %
      if (route[0] === 'destinations' && route[1]) await viewDestination(view, token, route[1]);
      else if (route[0] === 'runs' && route[1]) await viewRun(view, token, route[1]);
      else await viewDestinations(view, token);
      if (token === generation) {
        const box = document.getElementById('message');
        if (box.classList.contains('message-error')) clearMessage();
      }
    } catch (error) {
      if (token === generation) {
        view.replaceChildren();  // not the previous view under this one's error
        failed(error);
      }
    } finally {
      view.removeAttribute('aria-busy');
    }
  }

  document.addEventListener('DOMContentLoaded', () => {
    document.getElementById('key-form').addEventListener('submit', (event) => {
      event.preventDefault();
      const input = document.getElementById('key-input');
      const key = input.value.trim();
      if (!key) return;
      window.sessionStorage.setItem(KEY_STORE, key);
      input.value = '';
      clearMessage();
      render().then(() => { document.getElementById('main').focus(); });
    });
    document.getElementById('forget-key').addEventListener('click', () => {
      window.sessionStorage.removeItem(KEY_STORE);
      showMessage('The key was forgotten by this tab.', 'info');
      showKeyForm();
    });
    window.addEventListener('hashchange', () => { render().then(() => { document.getElementById('main').focus(); }); });
    render();
  });
}());
