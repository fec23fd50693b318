// 会通 admin console: one ES module, no build step. Talks to /api/v1 on the same origin
// (see /api/openapi.json). The API enforces every permission; the console only hides
// what the signed-in role may not do.

const $ = (sel, root = document) => root.querySelector(sel);
const $$ = (sel, root = document) => [...root.querySelectorAll(sel)];

/** Builds an element: h('td', {class: 'x'}, 'text', child). Text is never parsed as HTML. */
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === false || v === null || v === undefined) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'dataset') Object.assign(el.dataset, v);
    else if (v === true) el.setAttribute(k, '');
    else el.setAttribute(k, String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : String(c));
  }
  return el;
}

// ------------------------------------------------------------------ API access

const ERRORS = {
  invalid_credentials: '用户名或密码错误',
  account_locked: '账户已锁定，请稍后再试或联系安全管理员',
  account_disabled: '账户已停用',
  password_change_required: '请先修改密码',
  password_policy: '密码不符合策略',
  token_expired: '登录已过期，请重新登录',
  token_revoked: '登录已失效，请重新登录',
  unauthenticated: '请先登录',
  forbidden: '无权执行此操作',
  not_found: '对象不存在',
  conflict: '与已有数据冲突（如用户名或组织名重复）',
  org_not_empty: '组织下仍有下级组织、用户或终端，不能删除',
  org_cycle: '不能移动到自身或下级组织之下',
  terminal_busy: '终端在该时段已被其他会议占用',
  invalid_field: '字段无效',
  invalid_body: '请求内容无效',
  payload_too_large: '文件或请求过大',
  meeting_cancelled: '会议已取消',
  signin_closed: '签到已结束',
  signin_not_open: '签到未开始',
};

class ApiError extends Error {
  constructor(status, code, message) {
    super(`${ERRORS[code] || code}：${message}`);
    this.status = status;
    this.code = code;
  }
}

const session = {
  get access() { return sessionStorage.getItem('ht_access'); },
  get refresh() { return sessionStorage.getItem('ht_refresh'); },
  set(pair) {
    sessionStorage.setItem('ht_access', pair.access_token);
    sessionStorage.setItem('ht_refresh', pair.refresh_token);
  },
  clear() {
    sessionStorage.removeItem('ht_access');
    sessionStorage.removeItem('ht_refresh');
  },
};

let refreshing = null;

async function refreshTokens() {
  // Refresh tokens are single use: concurrent 401s must share one refresh.
  refreshing ??= (async () => {
    try {
      const r = await fetch('/api/v1/auth/refresh', {
        method: 'POST',
        headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify({ refresh_token: session.refresh || '' }),
      });
      if (!r.ok) return false;
      session.set(await r.json());
      return true;
    } catch { return false; } finally { setTimeout(() => { refreshing = null; }, 0); }
  })();
  return refreshing;
}

/** Calls the API; JSON in and out. `raw` sends a string body with its own content type. */
async function api(method, path, body, { raw, type, text } = {}, retried = false) {
  const headers = {};
  if (session.access) headers.Authorization = `Bearer ${session.access}`;
  let payload;
  if (raw !== undefined) { payload = raw; headers['Content-Type'] = type; }
  else if (body !== undefined) { payload = JSON.stringify(body); headers['Content-Type'] = 'application/json'; }
  const r = await fetch(path, { method, headers, body: payload });
  if (r.status === 401 && !retried && session.refresh && !path.startsWith('/api/v1/auth/')) {
    if (await refreshTokens()) return api(method, path, body, { raw, type, text }, true);
  }
  if (!r.ok) {
    let e = { code: 'http_' + r.status, message: r.statusText };
    try { e = await r.json(); } catch { /* not JSON */ }
    if (r.status === 401 && !path.startsWith('/api/v1/auth/')) expired();
    throw new ApiError(r.status, e.code, e.message);
  }
  return text ? r.text() : r.json();
}

const qs = (o) => {
  const p = new URLSearchParams();
  for (const [k, v] of Object.entries(o)) if (v !== undefined && v !== null && v !== '') p.set(k, v);
  const s = p.toString();
  return s ? `?${s}` : '';
};

// ------------------------------------------------------------------ small UI helpers

let toastTimer;
function toast(msg, bad = false) {
  const t = $('#toast');
  t.textContent = msg;
  t.className = bad ? 'bad' : '';
  t.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { t.hidden = true; }, bad ? 8000 : 3000);
}

/** Runs an action, showing its error instead of throwing. */
async function attempt(fn) {
  try { return await fn(); } catch (e) { toast(e.message || String(e), true); return undefined; }
}

function showError(el, e) {
  el.textContent = e ? (e.message || String(e)) : '';
  el.hidden = !e;
}

const pad = (n) => String(n).padStart(2, '0');
function fmtTime(ms) {
  if (ms === null || ms === undefined) return '';
  const d = new Date(ms);
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}`;
}
function toLocalInput(ms) {
  const d = new Date(ms);
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}`;
}

const ROLE_NAMES = { system_admin: '系统管理员', security_admin: '安全管理员', audit_admin: '审计管理员', user: '普通用户' };
const STATUS_NAMES = { active: '正常', disabled: '停用', scheduled: '已预约', cancelled: '已取消', signed: '已签到', late: '迟到', absent: '未签到' };

/**
 * The shared dialog. `fields` is a list of {name, label, type?, value?, options?, hint?,
 * required?} or DOM nodes; `save(values)` may throw an ApiError, shown in the dialog.
 */
function openDialog(title, fields, save) {
  const dlg = $('#dlg');
  $('#dlg-title').textContent = title;
  const box = $('#dlg-fields');
  box.replaceChildren();
  for (const f of fields) {
    if (f instanceof Node) { box.append(f); continue; }
    const id = `f-${f.name}`;
    let input;
    if (f.type === 'select') {
      input = h('select', { id, name: f.name }, f.options.map(([v, l]) => h('option', { value: v, selected: v === f.value }, l)));
    } else if (f.type === 'checkbox') {
      input = h('input', { id, name: f.name, type: 'checkbox', checked: !!f.value });
      box.append(h('label', { class: 'check' }, input, f.label));
      continue;
    } else {
      input = h('input', { id, name: f.name, type: f.type || 'text', required: !!f.required, value: f.value ?? '', autocomplete: 'off', ...(f.attrs || {}) });
    }
    box.append(h('label', {}, f.label, input, f.hint ? h('span', { class: 'hint' }, f.hint) : null));
  }
  showError($('#dlg-error'), null);
  const form = $('#dlg-form');
  form.onsubmit = async (ev) => {
    ev.preventDefault();
    const values = {};
    for (const el of $$('input[name], select[name]', box)) {
      values[el.name] = el.type === 'checkbox' ? el.checked : el.value.trim();
    }
    $('#dlg-save').disabled = true;
    try {
      await save(values);
      dlg.close();
    } catch (e) {
      showError($('#dlg-error'), e);
    } finally {
      $('#dlg-save').disabled = false;
    }
  };
  $('#dlg-cancel').onclick = () => dlg.close();
  dlg.showModal();
  const first = $('input:not([type=checkbox]), select', box);
  if (first) first.focus();
}

// ------------------------------------------------------------------ login

let me = null;

function showLogin() {
  me = null;
  $('#app-view').hidden = true;
  $('#login-view').hidden = false;
  $('#login-form').hidden = false;
  $('#pwchange-form').hidden = true;
  $('#login-password').value = '';
  $('#login-username').focus();
}

function expired() {
  session.clear();
  if (me) { showLogin(); showError($('#login-error'), new Error('登录已过期，请重新登录')); }
}

let pendingLogin = null;

$('#login-form').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const username = $('#login-username').value.trim();
  const password = $('#login-password').value;
  showError($('#login-error'), null);
  $('#login-submit').disabled = true;
  try {
    const pair = await api('POST', '/api/v1/auth/login', { username, password });
    session.set(pair);
    if (pair.must_change_password) {
      pendingLogin = { username };
      $('#login-form').hidden = true;
      $('#pwchange-form').hidden = false;
      $('#pw-old').value = password;
      $('#pw-new').focus();
      return;
    }
    await enter();
  } catch (e) {
    showError($('#login-error'), e);
  } finally {
    $('#login-submit').disabled = false;
  }
});

$('#pwchange-form').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const old_password = $('#pw-old').value;
  const new_password = $('#pw-new').value;
  if (new_password !== $('#pw-new2').value) {
    showError($('#pw-error'), new Error('两次输入的新密码不一致'));
    return;
  }
  showError($('#pw-error'), null);
  try {
    await api('POST', '/api/v1/me/password', { old_password, new_password });
    // A fresh session under the new password, so no token issued under the old one remains.
    await attempt(() => api('POST', '/api/v1/auth/logout'));
    const pair = await api('POST', '/api/v1/auth/login', { username: pendingLogin.username, password: new_password });
    session.set(pair);
    $('#pw-old').value = $('#pw-new').value = $('#pw-new2').value = '';
    await enter();
  } catch (e) {
    showError($('#pw-error'), e);
  }
});

$('#logout').addEventListener('click', async () => {
  stopSigninPoll();
  await attempt(() => api('POST', '/api/v1/auth/logout'));
  session.clear();
  showLogin();
});

// ------------------------------------------------------------------ navigation

const VIEWS = {
  directory: { label: '组织目录', roles: ['system_admin'] },
  import: { label: '批量导入', roles: ['system_admin'] },
  meetings: { label: '会议', roles: ['system_admin', 'user'] },
  audit: { label: '审计日志', roles: ['audit_admin'] },
  security: { label: '安全策略', roles: ['security_admin'] },
  account: { label: '我的账户', roles: ['system_admin', 'security_admin', 'audit_admin', 'user'] },
};

async function enter() {
  me = await api('GET', '/api/v1/me');
  // Another account may have used this tab before: nothing of its views survives.
  for (const k of Object.keys(loaded)) delete loaded[k];
  tree.nodes.clear();
  tree.selected = null;
  $('#org-tree').replaceChildren();
  $('#login-view').hidden = true;
  $('#app-view').hidden = false;
  $('#who').textContent = `${me.name}（${me.username}，${ROLE_NAMES[me.role] || me.role}）`;
  const nav = $('#nav');
  nav.replaceChildren();
  for (const [key, v] of Object.entries(VIEWS)) {
    if (!v.roles.includes(me.role)) continue;
    nav.append(h('button', { type: 'button', dataset: { view: key }, onclick: () => show(key) }, v.label));
  }
  const first = Object.keys(VIEWS).find((k) => VIEWS[k].roles.includes(me.role));
  show(first);
}

const loaded = {};

function show(view) {
  stopSigninPoll();
  for (const m of $$('main.view')) m.hidden = m.id !== `view-${view}`;
  for (const b of $$('#nav button')) b.classList.toggle('on', b.dataset.view === view);
  const init = { directory: initDirectory, meetings: loadMeetings, audit: loadAudit, security: loadSecurity, account: loadAccount, import: showImport }[view];
  if (init) attempt(async () => { await init(!loaded[view]); loaded[view] = true; });
}

// ------------------------------------------------------------------ directory tree

const tree = { nodes: new Map(), selected: null };

/** One tree row; children are fetched when first expanded (the tree may hold 20,000 orgs). */
function treeNode(org) {
  const toggle = h('button', { type: 'button', class: 'tw', 'aria-label': '展开' }, '▸');
  const label = h('span', { class: 'label' }, org.name);
  const kids = h('div', { class: 'kids', role: 'group', hidden: true });
  const row = h('div', { class: 'row', role: 'treeitem', dataset: { id: org.id } }, toggle, label);
  const el = h('div', { class: 'node', dataset: { id: org.id, name: org.name } }, row, kids);
  const node = { org, el, row, kids, toggle, loaded: false, open: false };
  tree.nodes.set(org.id, node);
  toggle.addEventListener('click', () => attempt(() => expand(node, !node.open)));
  label.addEventListener('click', () => select(node));
  return node;
}

async function expand(node, open) {
  if (open && !node.loaded) {
    const kids = await api('GET', `/api/v1/orgs${qs({ parent_id: node.org.id })}`);
    node.kids.replaceChildren(...kids.map((o) => treeNode(o).el));
    node.loaded = true;
    if (kids.length === 0) node.toggle.classList.add('leaf');
  }
  node.open = open;
  node.kids.hidden = !open;
  node.toggle.textContent = open ? '▾' : '▸';
}

async function reloadChildren(node) {
  node.loaded = false;
  node.toggle.classList.remove('leaf');
  await expand(node, true);
}

function select(node) {
  if (tree.selected) tree.selected.row.classList.remove('sel');
  tree.selected = node;
  node.row.classList.add('sel');
  $('#org-title').textContent = node.org.name;
  $('#org-path').textContent = orgBreadcrumb(node);
  const isScopeRoot = node.org.id === tree.rootId;
  $('#org-rename').disabled = isScopeRoot;
  $('#org-delete').disabled = isScopeRoot;
  pages.users = 0;
  pages.terminals = 0;
  attempt(loadUsers);
  attempt(loadTerminals);
}

function orgBreadcrumb(node) {
  const names = [];
  for (let n = node; n; n = tree.nodes.get(n.org.parent_id)) names.unshift(n.org.name);
  return names.join(' / ');
}

async function initDirectory(first) {
  if (!first) return;
  const [root] = await api('GET', '/api/v1/orgs');
  tree.rootId = root.id;
  const node = treeNode(root);
  $('#org-tree').replaceChildren(node.el);
  select(node);
  await expand(node, true);
}

$('#tree-filter').addEventListener('input', (ev) => {
  // Filters what is loaded; finding people anywhere below is the user search's job.
  const q = ev.target.value.trim().toLowerCase();
  for (const n of tree.nodes.values()) {
    const hit = !q || n.org.name.toLowerCase().includes(q);
    n.row.classList.toggle('dim', !hit);
  }
});

$('#org-add').addEventListener('click', () => {
  const parent = tree.selected;
  if (!parent) return;
  openDialog(`在“${parent.org.name}”下新建组织`, [
    { name: 'name', label: '组织名称', required: true, attrs: { maxlength: 100 } },
    { name: 'sort', label: '排序号', type: 'number', value: '0' },
  ], async (v) => {
    const org = await api('POST', '/api/v1/orgs', { parent_id: parent.org.id, name: v.name, sort: Number(v.sort) || 0 });
    await reloadChildren(parent);
    toast(`已创建组织 ${org.name}`);
  });
});

$('#org-rename').addEventListener('click', () => {
  const node = tree.selected;
  if (!node) return;
  openDialog('重命名组织', [
    { name: 'name', label: '组织名称', required: true, value: node.org.name },
    { name: 'sort', label: '排序号', type: 'number', value: String(node.org.sort) },
  ], async (v) => {
    await api('PATCH', `/api/v1/orgs/${node.org.id}`, { name: v.name, sort: Number(v.sort) || 0 });
    const parent = tree.nodes.get(node.org.parent_id);
    if (parent) await reloadChildren(parent);
    const fresh = tree.nodes.get(node.org.id);
    if (fresh) select(fresh);
  });
});

$('#org-delete').addEventListener('click', () => attempt(async () => {
  const node = tree.selected;
  if (!node || !confirm(`删除组织“${node.org.name}”？只有空组织可以删除。`)) return;
  await api('DELETE', `/api/v1/orgs/${node.org.id}`);
  const parent = tree.nodes.get(node.org.parent_id);
  tree.nodes.delete(node.org.id);
  if (parent) { await reloadChildren(parent); select(parent); }
  toast('已删除');
}));

for (const b of $$('#org-pane .tabs button')) {
  b.addEventListener('click', () => {
    for (const o of $$('#org-pane .tabs button')) o.classList.toggle('on', o === b);
    $('#tab-users').hidden = b.dataset.tab !== 'users';
    $('#tab-terminals').hidden = b.dataset.tab !== 'terminals';
  });
}

// ------------------------------------------------------------------ users and terminals

const PAGE = 50;
const pages = { users: 0, terminals: 0, audit: 0 };

function pager(kind, count) {
  const p = $(`.pager[data-for=${kind}]`);
  $('span', p).textContent = `第 ${pages[kind] + 1} 页`;
  $('[data-dir="-1"]', p).disabled = pages[kind] === 0;
  $('[data-dir="1"]', p).disabled = count < PAGE;
}

for (const p of $$('.pager')) {
  for (const b of $$('button', p)) {
    b.addEventListener('click', () => {
      const kind = p.dataset.for;
      pages[kind] = Math.max(0, pages[kind] + Number(b.dataset.dir));
      attempt({ users: loadUsers, terminals: loadTerminals, audit: () => loadAudit(false, true) }[kind]);
    });
  }
}

async function loadUsers() {
  const org = tree.selected?.org;
  if (!org) return;
  const users = await api('GET', `/api/v1/users${qs({
    org_id: org.id, subtree: $('#user-subtree').checked, q: $('#user-q').value.trim(),
    order: $('#user-order').value, limit: PAGE, offset: pages.users * PAGE,
  })}`);
  $('#user-table tbody').replaceChildren(...users.map((u) => h('tr', { dataset: { id: u.id } },
    h('td', {}, u.name), h('td', {}, u.username), h('td', {}, u.title),
    h('td', {}, u.phone || '', u.phone_hidden ? h('span', { class: 'tag', title: '仅管理员可见' }, '隐藏') : null),
    h('td', {}, u.email || ''), h('td', {}, ROLE_NAMES[u.role] || u.role),
    h('td', {}, STATUS_NAMES[u.status] || u.status),
    h('td', {}, h('button', { type: 'button', onclick: () => editUser(u) }, '编辑')))));
  if (users.length === 0) $('#user-table tbody').append(h('tr', {}, h('td', { colspan: 8, class: 'muted' }, '没有用户')));
  pager('users', users.length);
}

$('#user-search').addEventListener('submit', (ev) => { ev.preventDefault(); pages.users = 0; attempt(loadUsers); });
$('#user-subtree').addEventListener('change', () => { pages.users = 0; attempt(loadUsers); });
$('#user-order').addEventListener('change', () => { pages.users = 0; attempt(loadUsers); });

function userFields(u) {
  return [
    ...(u ? [] : [{ name: 'username', label: '用户名（登录名）', required: true, hint: '字母、数字、. _ - @' }]),
    { name: 'name', label: '姓名', required: true, value: u?.name },
    { name: 'title', label: '职务', value: u?.title },
    { name: 'phone', label: '电话', value: u?.phone },
    { name: 'phone_hidden', label: '隐藏电话号码（仅管理员可见）', type: 'checkbox', value: u?.phone_hidden },
    { name: 'email', label: '邮箱', type: 'email', value: u?.email },
    { name: 'tags', label: '标签', value: u?.tags?.join('；'), hint: '多个用“；”或“;”分隔' },
    ...(u ? [{ name: 'status', label: '状态', type: 'select', value: u.status, options: [['active', '正常'], ['disabled', '停用']] }]
      : [{ name: 'password', label: '初始密码（可选，首次登录须修改）', type: 'password' }]),
  ];
}

const splitTags = (s) => s.split(/[;；,，]/).map((t) => t.trim()).filter(Boolean);

$('#user-add').addEventListener('click', () => {
  const org = tree.selected?.org;
  if (!org) return;
  openDialog(`在“${org.name}”新建用户`, userFields(null), async (v) => {
    const u = await api('POST', '/api/v1/users', {
      username: v.username, name: v.name, org_id: org.id, title: v.title, tags: splitTags(v.tags),
      phone: v.phone || null, phone_hidden: v.phone_hidden, email: v.email || null, password: v.password || null,
    });
    toast(`已创建用户 ${u.name}`);
    await loadUsers();
  });
});

function editUser(u) {
  openDialog(`编辑用户 ${u.username}`, userFields(u), async (v) => {
    await api('PATCH', `/api/v1/users/${u.id}`, {
      name: v.name, title: v.title, tags: splitTags(v.tags), phone: v.phone || null,
      phone_hidden: v.phone_hidden, email: v.email || null, status: v.status,
    });
    toast('已保存');
    await loadUsers();
  });
}

async function loadTerminals() {
  const org = tree.selected?.org;
  if (!org) return;
  const list = await api('GET', `/api/v1/terminals${qs({ org_id: org.id, q: $('#term-q').value.trim(), limit: PAGE, offset: pages.terminals * PAGE })}`);
  $('#term-table tbody').replaceChildren(...list.map((t) => h('tr', { dataset: { id: t.id } },
    h('td', {}, t.name), h('td', {}, t.protocol.toUpperCase()), h('td', {}, t.address),
    h('td', {}, t.capabilities.join(', ')), h('td', {}, STATUS_NAMES[t.status] || t.status),
    h('td', {}, h('button', { type: 'button', onclick: () => editTerminal(t) }, '编辑'),
      h('button', { type: 'button', class: 'danger', onclick: () => deleteTerminal(t) }, '删除')))));
  if (list.length === 0) $('#term-table tbody').append(h('tr', {}, h('td', { colspan: 6, class: 'muted' }, '没有终端')));
  pager('terminals', list.length);
}

$('#term-search').addEventListener('submit', (ev) => { ev.preventDefault(); pages.terminals = 0; attempt(loadTerminals); });

const PROTOCOLS = [['sip', 'SIP'], ['h323', 'H.323'], ['webrtc', 'WebRTC']];

function terminalFields(t) {
  return [
    { name: 'name', label: '名称', required: true, value: t?.name },
    { name: 'protocol', label: '协议', type: 'select', value: t?.protocol || 'sip', options: PROTOCOLS },
    { name: 'address', label: '地址', required: true, value: t?.address, hint: 'SIP URI、H.323 别名/IP 或 WebRTC 设备号' },
    { name: 'capabilities', label: '能力', value: t?.capabilities?.join('；'), hint: '如 h264；1080p；dual_stream' },
    ...(t ? [{ name: 'status', label: '状态', type: 'select', value: t.status, options: [['active', '正常'], ['disabled', '停用']] }] : []),
  ];
}

$('#term-add').addEventListener('click', () => {
  const org = tree.selected?.org;
  if (!org) return;
  openDialog(`在“${org.name}”登记终端`, terminalFields(null), async (v) => {
    await api('POST', '/api/v1/terminals', { name: v.name, org_id: org.id, protocol: v.protocol, address: v.address, capabilities: splitTags(v.capabilities) });
    toast('已登记终端');
    await loadTerminals();
  });
});

function editTerminal(t) {
  openDialog(`编辑终端 ${t.name}`, terminalFields(t), async (v) => {
    await api('PATCH', `/api/v1/terminals/${t.id}`, { name: v.name, protocol: v.protocol, address: v.address, capabilities: splitTags(v.capabilities), status: v.status });
    toast('已保存');
    await loadTerminals();
  });
}

function deleteTerminal(t) {
  attempt(async () => {
    if (!confirm(`删除终端“${t.name}”？曾被预约的终端将改为停用。`)) return;
    await api('DELETE', `/api/v1/terminals/${t.id}`);
    await loadTerminals();
  });
}

// ------------------------------------------------------------------ CSV import

function showImport() {
  const org = tree.selected?.org;
  $('#import-org').textContent = org ? orgBreadcrumb(tree.selected) : '（请先在“组织目录”中选择组织）';
  $('#import-start').disabled = !org;
}

/**
 * Splits CSV text into records' end offsets, honouring quoted fields that contain
 * line breaks, so the file can be sent in chunks that each start with the header.
 */
function recordEnds(text) {
  const ends = [];
  let quoted = false;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c === 34) quoted = !quoted; // '"'; a doubled quote toggles twice
    else if (c === 10 && !quoted) ends.push(i + 1);
  }
  if (text.length && (ends.length === 0 || ends[ends.length - 1] !== text.length)) ends.push(text.length);
  return ends;
}

const countLines = (s) => { let n = 0; for (let i = 0; i < s.length; i++) if (s.charCodeAt(i) === 10) n++; return n; };

$('#import-form').addEventListener('submit', (ev) => {
  ev.preventDefault();
  attempt(async () => {
    const org = tree.selected?.org;
    const file = $('#import-file').files[0];
    if (!org || !file) return;
    let text = await file.text();
    if (text.charCodeAt(0) === 0xfeff) text = text.slice(1);
    const ends = recordEnds(text);
    if (ends.length < 2) throw new Error('文件为空或只有表头');
    const header = text.slice(0, ends[0]).replace(/\r?\n?$/, '\n');
    // The import API answers once per request; sending the file in chunks of rows
    // gives the progress bar real steps. Each chunk is its own committed import.
    const ROWS = 2000;
    const total = { rows: 0, created: 0, failed: 0, orgs_created: 0, errors: [], truncated: false };
    const bar = $('#import-progress');
    bar.hidden = false;
    bar.value = 0;
    $('#import-start').disabled = true;
    $('#import-errors').hidden = true;
    try {
      let linesBefore = countLines(header);
      for (let r = 1; r < ends.length; r += ROWS) {
        const start = ends[r - 1];
        const end = ends[Math.min(r + ROWS, ends.length) - 1];
        const chunk = text.slice(start, end);
        // The chunk's report counts its header as line 1 and its first row as line 2.
        const firstLine = linesBefore + 1;
        linesBefore += countLines(chunk);
        const rep = await api('POST', `/api/v1/users/import${qs({ org_id: org.id, create_orgs: $('#import-create-orgs').checked })}`,
          undefined, { raw: header + chunk, type: 'text/csv; charset=utf-8' });
        total.rows += rep.rows; total.created += rep.created; total.failed += rep.failed; total.orgs_created += rep.orgs_created;
        total.truncated ||= rep.errors_truncated;
        for (const e of rep.errors) if (total.errors.length < 1000) total.errors.push({ ...e, line: e.line - 2 + firstLine });
        bar.value = Math.round((end / text.length) * 100);
        $('#import-status').textContent = `已处理 ${total.rows} 行：成功 ${total.created}，失败 ${total.failed}，新建组织 ${total.orgs_created}`;
      }
      $('#import-status').textContent = `导入完成：共 ${total.rows} 行，成功 ${total.created}，失败 ${total.failed}，新建组织 ${total.orgs_created}` +
        (total.truncated || total.errors.length >= 1000 ? '（错误列表仅显示前部分）' : '');
      if (total.errors.length) {
        $('#import-errors tbody').replaceChildren(...total.errors.map((e) => h('tr', {}, h('td', {}, e.line), h('td', {}, e.code), h('td', {}, e.message))));
        $('#import-errors').hidden = false;
      }
      if (tree.selected) await reloadChildren(tree.selected);
    } finally {
      $('#import-start').disabled = false;
    }
  });
});

// ------------------------------------------------------------------ meetings

let meetingView = 'list';
let calMonth = (() => { const d = new Date(); return new Date(d.getFullYear(), d.getMonth(), 1); })();
let meetingCache = [];

for (const b of $$('[data-mview]')) {
  b.addEventListener('click', () => {
    meetingView = b.dataset.mview;
    for (const o of $$('[data-mview]')) o.classList.toggle('on', o === b);
    $('#mtg-list').hidden = meetingView !== 'list';
    $('#mtg-calendar').hidden = meetingView !== 'calendar';
    attempt(loadMeetings);
  });
}
$('#mtg-cancelled').addEventListener('change', () => attempt(loadMeetings));
$('#cal-prev').addEventListener('click', () => { calMonth = new Date(calMonth.getFullYear(), calMonth.getMonth() - 1, 1); attempt(loadMeetings); });
$('#cal-next').addEventListener('click', () => { calMonth = new Date(calMonth.getFullYear(), calMonth.getMonth() + 1, 1); attempt(loadMeetings); });

async function loadMeetings() {
  const view = me.role === 'system_admin' ? 'scope' : 'mine';
  const include_cancelled = $('#mtg-cancelled').checked;
  if (meetingView === 'list') {
    // Upcoming and recent: from a week ago on.
    const from_ms = Date.now() - 7 * 86400000;
    meetingCache = await api('GET', `/api/v1/meetings${qs({ view, include_cancelled, from_ms, limit: 500 })}`);
    renderMeetingList();
  } else {
    const next = new Date(calMonth.getFullYear(), calMonth.getMonth() + 1, 1);
    // Recurring meetings that started earlier still have occurrences this month.
    meetingCache = await api('GET', `/api/v1/meetings${qs({ view, include_cancelled, from_ms: calMonth.getTime() - 366 * 86400000, to_ms: next.getTime(), limit: 500 })}`);
    renderCalendar();
  }
}

const fmtDuration = (m) => (m.duration_minutes === null ? '不限时' : `${m.duration_minutes} 分钟`);
const fmtRecurrence = (m) => (m.recurrence
  ? `每${m.recurrence.interval > 1 ? m.recurrence.interval : ''}${m.recurrence.frequency === 'daily' ? '天' : '周'}，共 ${m.recurrence.count} 次`
  : '单次');

function mayManage(m) {
  return me.role === 'system_admin' || m.owner_id === me.id || m.host_id === me.id || m.cohost_ids.includes(me.id);
}

function renderMeetingList() {
  const rows = meetingCache.map((m) => h('tr', { dataset: { id: m.id }, class: m.status === 'cancelled' ? 'cancelled' : '' },
    h('td', { class: 'mono' }, m.number), h('td', { class: 'mtitle' }, m.title), h('td', {}, fmtTime(m.starts_at_ms)),
    h('td', {}, fmtDuration(m)), h('td', {}, fmtRecurrence(m)), h('td', {}, STATUS_NAMES[m.status] || m.status),
    h('td', {}, mayManage(m) && m.status !== 'cancelled' ? [
      h('button', { type: 'button', onclick: () => meetingForm(m) }, '修改'),
      h('button', { type: 'button', onclick: () => openSignin(m) }, '签到'),
      h('button', { type: 'button', class: 'danger', onclick: () => cancelMeeting(m) }, '取消'),
    ] : null)));
  if (rows.length === 0) rows.push(h('tr', {}, h('td', { colspan: 7, class: 'muted' }, '暂无会议')));
  $('#mtg-table tbody').replaceChildren(...rows);
}

/** Start times of a meeting's occurrences (recurrence expanded). */
function occurrences(m) {
  const r = m.recurrence;
  if (!r) return [m.starts_at_ms];
  const step = (r.frequency === 'daily' ? 1 : 7) * r.interval;
  const out = [];
  const d0 = new Date(m.starts_at_ms);
  // Calendar days, not 24 h steps, so daylight-saving shifts keep the wall-clock time.
  for (let i = 0; i < r.count; i++) out.push(new Date(d0.getFullYear(), d0.getMonth(), d0.getDate() + i * step, d0.getHours(), d0.getMinutes()).getTime());
  return out;
}

function renderCalendar() {
  const y = calMonth.getFullYear();
  const mo = calMonth.getMonth();
  $('#cal-title').textContent = `${y} 年 ${mo + 1} 月`;
  const byDay = new Map();
  for (const m of meetingCache) {
    for (const t of occurrences(m)) {
      const d = new Date(t);
      if (d.getFullYear() !== y || d.getMonth() !== mo) continue;
      const list = byDay.get(d.getDate()) || [];
      list.push({ m, t });
      byDay.set(d.getDate(), list);
    }
  }
  const grid = $('#cal-grid');
  grid.replaceChildren(...['一', '二', '三', '四', '五', '六', '日'].map((d) => h('div', { class: 'dow' }, `周${d}`)));
  const lead = (new Date(y, mo, 1).getDay() + 6) % 7;
  for (let i = 0; i < lead; i++) grid.append(h('div', { class: 'day empty' }));
  const days = new Date(y, mo + 1, 0).getDate();
  const today = new Date();
  for (let d = 1; d <= days; d++) {
    const items = (byDay.get(d) || []).sort((a, b) => a.t - b.t);
    const isToday = today.getFullYear() === y && today.getMonth() === mo && today.getDate() === d;
    grid.append(h('div', { class: `day${isToday ? ' today' : ''}`, dataset: { day: d } }, h('span', { class: 'dnum' }, d),
      items.map(({ m, t }) => h('div', {
        class: `ev${m.status === 'cancelled' ? ' cancelled' : ''}`, title: `${m.number} ${m.title}`,
        onclick: () => (mayManage(m) && m.status !== 'cancelled' ? meetingForm(m) : null),
      }, `${pad(new Date(t).getHours())}:${pad(new Date(t).getMinutes())} ${m.title}`))));
  }
}

function cancelMeeting(m) {
  attempt(async () => {
    if (!confirm(`取消会议“${m.title}”（${m.number}）？`)) return;
    await api('POST', `/api/v1/meetings/${m.id}/cancel`);
    toast('会议已取消');
    await loadMeetings();
  });
}

$('#mtg-new').addEventListener('click', () => meetingForm(null));

/** A search box that adds picked people (or terminals) to a chip list. */
function picker(label, search, initial) {
  const chosen = new Map(initial.map((x) => [x.id, x.name]));
  const chips = h('div', { class: 'chips' });
  const results = h('ul', { class: 'results' });
  const input = h('input', { type: 'search', placeholder: '输入姓名、拼音首字母搜索', autocomplete: 'off' });
  const render = () => chips.replaceChildren(...[...chosen].map(([id, name]) => h('span', { class: 'chip', dataset: { id } }, name,
    h('button', { type: 'button', 'aria-label': '移除', onclick: () => { chosen.delete(id); render(); } }, '×'))));
  let seq = 0;
  // Enter picks nothing and must not submit the whole dialog.
  input.addEventListener('keydown', (ev) => { if (ev.key === 'Enter') ev.preventDefault(); });
  input.addEventListener('input', () => {
    const q = input.value.trim();
    const mine = ++seq;
    if (!q) { results.replaceChildren(); return; }
    setTimeout(() => attempt(async () => {
      if (mine !== seq) return;
      const found = await search(q);
      if (mine !== seq) return;
      results.replaceChildren(...found.slice(0, 20).map((x) => h('li', {}, h('button', {
        type: 'button', dataset: { id: x.id },
        onclick: () => { chosen.set(x.id, x.name); render(); results.replaceChildren(); input.value = ''; },
      }, x.name, x.detail ? h('span', { class: 'muted' }, ` ${x.detail}`) : null))));
    }), 200);
  });
  render();
  const el = h('div', { class: 'picker' }, h('span', { class: 'plabel' }, label), chips, input, results);
  return { el, ids: () => [...chosen.keys()], input };
}

const searchPeople = async (q) => (await api('GET', `/api/v1/directory/users${qs({ q, limit: 20 })}`))
  .map((u) => ({ id: u.id, name: u.name, detail: u.title }));
const searchTerminals = async (q) => (await api('GET', `/api/v1/terminals${qs({ q, limit: 20 })}`))
  .map((t) => ({ id: t.id, name: t.name, detail: `${t.protocol.toUpperCase()} ${t.address}` }));

/** Names for ids already on a meeting (the directory search cannot look ids up). */
const idNames = (ids) => ids.map((id) => ({ id, name: `#${id}` }));

function meetingForm(m) {
  const start = m ? m.starts_at_ms : Math.ceil(Date.now() / 3600000) * 3600000;
  const invitees = picker('邀请人员', searchPeople, idNames(m?.invitees.users || []));
  invitees.el.id = 'm-invite-users';
  const cohosts = picker('联席主持人', searchPeople, idNames(m?.cohost_ids || []));
  cohosts.el.id = 'm-cohosts';
  const terms = me.role === 'system_admin' ? picker('邀请终端（会议室）', searchTerminals, idNames(m?.invitees.terminals || [])) : null;
  const selOrg = me.role === 'system_admin' ? tree.selected?.org : null;
  const orgInvited = m ? m.invitees.orgs : [];
  const fields = [
    { name: 'title', label: '会议主题', required: true, value: m?.title, attrs: { maxlength: 200 } },
    { name: 'start', label: '开始时间', type: 'datetime-local', required: true, value: toLocalInput(start) },
    { name: 'duration', label: '时长（分钟，留空为不限时）', type: 'number', value: m ? (m.duration_minutes ?? '') : '60', attrs: { min: 1, max: 10080 } },
    { name: 'freq', label: '重复', type: 'select', value: m?.recurrence?.frequency || '', options: [['', '不重复'], ['daily', '每天'], ['weekly', '每周']] },
    { name: 'interval', label: '间隔（天/周）', type: 'number', value: String(m?.recurrence?.interval || 1), attrs: { min: 1, max: 52 } },
    { name: 'count', label: '次数', type: 'number', value: String(m?.recurrence?.count || 1), attrs: { min: 1, max: 366 } },
    { name: 'passcode', label: '会议密码（4–12 位数字，可选）', value: m?.passcode || '', attrs: { inputmode: 'numeric', pattern: '[0-9]{4,12}' } },
    { name: 'layout', label: '默认布局', type: 'select', value: m?.layout || 'auto', options: [['auto', '自动'], ['gallery', '宫格'], ['speaker', '演讲者']] },
    { name: 'directory_only', label: '仅限目录内人员入会', type: 'checkbox', value: m?.directory_only },
    { name: 'locked', label: '锁定会议', type: 'checkbox', value: m?.locked },
    { name: 'recording', label: '录制', type: 'checkbox', value: m?.recording },
    ...(selOrg && !m ? [{ name: 'invite_org', label: `邀请整个组织：${selOrg.name}（含下级）`, type: 'checkbox', value: false }] : []),
    ...(orgInvited.length ? [h('p', { class: 'note' }, `已邀请组织 ${orgInvited.length} 个（保持不变）`)] : []),
    invitees.el, cohosts.el, terms?.el,
  ].filter(Boolean);
  openDialog(m ? `修改会议 ${m.number}` : '预约会议', fields, async (v) => {
    const startMs = new Date(v.start).getTime();
    if (!Number.isFinite(startMs)) throw new Error('开始时间无效');
    const orgs = [...orgInvited];
    if (v.invite_org && selOrg) orgs.push({ id: selOrg.id, subtree: true });
    const body = {
      title: v.title,
      starts_at_ms: startMs,
      duration_minutes: v.duration === '' ? null : Number(v.duration),
      recurrence: v.freq ? { frequency: v.freq, interval: Number(v.interval) || 1, count: Number(v.count) || 1 } : null,
      cohost_ids: cohosts.ids(),
      invitees: { users: invitees.ids(), terminals: terms ? terms.ids() : (m?.invitees.terminals || []), orgs },
      passcode: v.passcode || null,
      directory_only: v.directory_only,
      locked: v.locked,
      layout: v.layout,
      recording: v.recording,
    };
    if (!m && selOrg) body.org_id = selOrg.id;
    const saved = m ? await api('PATCH', `/api/v1/meetings/${m.id}`, body) : await api('POST', '/api/v1/meetings', body);
    toast(`${m ? '已修改' : '已预约'}会议 ${saved.title}，会议号 ${saved.number}`);
    await loadMeetings();
  });
}

// ------------------------------------------------------------------ sign-in (live)

let signin = null; // {meeting, id, timer}

function stopSigninPoll() {
  if (signin?.timer) clearInterval(signin.timer);
  if (signin) signin.timer = null;
}

const signinKey = (m) => `ht_signin_${m.id}`;

function openSignin(m) {
  show('signin');
  signin = { meeting: m, id: null, timer: null };
  $('#si-title').textContent = `签到：${m.title}（${m.number}）`;
  $('#si-live').hidden = true;
  // The API has no list of a meeting's sign-ins; the console remembers the ones it started.
  const known = localStorage.getItem(signinKey(m));
  $('#si-id').value = known || '';
  if (known) watchSignin(known);
}

$('#si-back').addEventListener('click', () => show('meetings'));

$('#si-start').addEventListener('submit', (ev) => {
  ev.preventDefault();
  attempt(async () => {
    const m = signin.meeting;
    const minutes = Math.max(1, Number($('#si-minutes').value) || 10);
    const s = await api('POST', `/api/v1/meetings/${m.id}/signins`, { deadline_ms: Date.now() + minutes * 60000, accept_late: $('#si-late').checked });
    localStorage.setItem(signinKey(m), String(s.id));
    $('#si-id').value = String(s.id);
    toast('签到已发起');
    watchSignin(String(s.id));
  });
});

$('#si-open').addEventListener('click', () => {
  const id = $('#si-id').value.trim();
  if (/^\d+$/.test(id)) watchSignin(id);
});

function watchSignin(id) {
  stopSigninPoll();
  signin.id = id;
  $('#si-live').hidden = false;
  const tick = () => attempt(refreshSignin);
  tick();
  signin.timer = setInterval(tick, 2000);
}

async function refreshSignin() {
  if (!signin?.id) return;
  const r = await api('GET', `/api/v1/meetings/${signin.meeting.id}/signins/${signin.id}`);
  const s = r.signin;
  $('#si-state').textContent = `${r.open ? '进行中' : '已结束'} · 截止 ${fmtTime(s.deadline_ms)}${s.accept_late ? '（截止后记迟到）' : ''} · 每 2 秒刷新`;
  $('#si-end').disabled = !r.open;
  const t = r.totals;
  $('#si-totals').replaceChildren(
    ...[['应到', t.invited], ['已签到', t.signed], ['迟到', t.late], ['未签到', t.absent], ['实到人数', t.headcount]]
      .map(([l, n]) => h('div', { class: 'total' }, h('span', { class: 'n' }, n), h('span', {}, l))));
  $('#si-orgs tbody').replaceChildren(...r.by_org.map((o) => h('tr', {}, h('td', {}, o.org_name),
    h('td', {}, o.counts.invited), h('td', {}, o.counts.signed), h('td', {}, o.counts.late), h('td', {}, o.counts.absent), h('td', {}, o.counts.headcount))));
  const kinds = { user: '人员', terminal: '终端', guest: '访客' };
  $('#si-people tbody').replaceChildren(...[...r.invitees, ...r.uninvited].map((p) => h('tr', { class: p.status },
    h('td', {}, kinds[p.kind] || p.kind), h('td', {}, p.name), h('td', {}, STATUS_NAMES[p.status] || p.status),
    h('td', {}, fmtTime(p.signed_at_ms)), h('td', {}, p.headcount))));
  if (!r.open) stopSigninPoll();
}

$('#si-end').addEventListener('click', () => attempt(async () => {
  await api('POST', `/api/v1/meetings/${signin.meeting.id}/signins/${signin.id}/end`);
  await refreshSignin();
}));

$('#si-csv').addEventListener('click', () => attempt(async () => {
  const csv = await api('GET', `/api/v1/meetings/${signin.meeting.id}/signins/${signin.id}/csv`, undefined, { text: true });
  // fetch() decodes the BOM away; put it back so spreadsheet programs read UTF-8.
  const blob = new Blob(['\ufeff', csv], { type: 'text/csv;charset=utf-8' });
  const a = h('a', { href: URL.createObjectURL(blob), download: `signin-${signin.meeting.number}-${signin.id}.csv` });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 10000);
}));

// ------------------------------------------------------------------ audit

$('#audit-form').addEventListener('submit', (ev) => { ev.preventDefault(); pages.audit = 0; attempt(() => loadAudit(false, true)); });

async function loadAudit(first, force) {
  if (!first && !force) return;
  const day = (id, end) => {
    const v = $(id).value;
    if (!v) return undefined;
    const [y, mo, d] = v.split('-').map(Number);
    return new Date(y, mo - 1, d + (end ? 1 : 0)).getTime();
  };
  const list = await api('GET', `/api/v1/audit${qs({
    actor: $('#audit-actor').value.trim(), action: $('#audit-action').value.trim(), result: $('#audit-result').value,
    from_ms: day('#audit-from', false), to_ms: day('#audit-to', true), limit: PAGE, offset: pages.audit * PAGE,
  })}`);
  $('#audit-table tbody').replaceChildren(...list.map((e) => h('tr', { class: `r-${e.result}`, title: `hash ${e.hash}` },
    h('td', {}, e.seq), h('td', {}, fmtTime(e.at)), h('td', {}, e.actor_name), h('td', {}, e.ip), h('td', {}, e.action),
    h('td', {}, e.target), h('td', {}, e.result), h('td', {}, e.detail))));
  if (list.length === 0) $('#audit-table tbody').append(h('tr', {}, h('td', { colspan: 8, class: 'muted' }, '没有符合条件的记录')));
  pager('audit', list.length);
}

$('#audit-verify').addEventListener('click', () => attempt(async () => {
  const out = $('#audit-verify-result');
  out.textContent = '校验中…';
  const v = await api('GET', '/api/v1/audit/verify');
  out.className = v.ok ? 'ok' : 'error';
  out.textContent = v.ok
    ? `哈希链完整：共 ${v.entries} 条记录，全部校验通过。`
    : `哈希链被破坏：第 ${v.broken_at} 条记录校验失败（共 ${v.entries} 条）。`;
}));

// ------------------------------------------------------------------ security admin

async function loadSecurity(first) {
  if (!first) return;
  const p = await api('GET', '/api/v1/security/policy');
  for (const [k, v] of Object.entries(p)) {
    const el = $(`#policy-form [name=${k}]`);
    if (el) el.value = v;
  }
  await loadAccounts();
}

$('#policy-form').addEventListener('submit', (ev) => {
  ev.preventDefault();
  attempt(async () => {
    const body = {};
    for (const el of $$('#policy-form input[name]')) body[el.name] = Number(el.value);
    await api('PUT', '/api/v1/security/policy', body);
    toast('策略已保存');
  });
});

$('#acct-search').addEventListener('submit', (ev) => { ev.preventDefault(); attempt(loadAccounts); });

async function loadAccounts() {
  const list = await api('GET', `/api/v1/accounts${qs({ q: $('#acct-q').value.trim(), limit: PAGE })}`);
  $('#acct-table tbody').replaceChildren(...list.map((a) => h('tr', {},
    h('td', {}, a.name), h('td', {}, a.username), h('td', {}, ROLE_NAMES[a.role] || a.role), h('td', {}, STATUS_NAMES[a.status] || a.status),
    h('td', {},
      h('button', { type: 'button', onclick: () => setRole(a) }, '角色'),
      h('button', { type: 'button', onclick: () => attempt(async () => { await api('POST', `/api/v1/accounts/${a.id}/unlock`); toast('已解锁'); }) }, '解锁'),
      h('button', { type: 'button', onclick: () => resetPassword(a) }, '重置密码')))));
}

function setRole(a) {
  openDialog(`设置 ${a.username} 的角色`, [
    { name: 'role', label: '角色', type: 'select', value: a.role, options: Object.entries(ROLE_NAMES) },
    { name: 'scope', label: '管理范围（组织编号，管理员角色必填）', value: '', attrs: { inputmode: 'numeric' } },
  ], async (v) => {
    await api('PUT', `/api/v1/accounts/${a.id}/role`, { role: v.role, scope_org_id: v.scope ? Number(v.scope) : null });
    toast('角色已更新');
    await loadAccounts();
  });
}

function resetPassword(a) {
  openDialog(`重置 ${a.username} 的密码`, [
    { name: 'password', label: '一次性密码（用户下次登录须修改）', type: 'password', required: true },
  ], async (v) => {
    await api('POST', `/api/v1/accounts/${a.id}/password`, { password: v.password });
    toast('密码已重置');
  });
}

// ------------------------------------------------------------------ own account

async function loadAccount() {
  me = await api('GET', '/api/v1/me');
  $('#me-info').replaceChildren(...[['姓名', me.name], ['用户名', me.username], ['角色', ROLE_NAMES[me.role] || me.role], ['职务', me.title]]
    .flatMap(([k, v]) => [h('dt', {}, k), h('dd', {}, v)]));
}

$('#own-pw-form').addEventListener('submit', (ev) => {
  ev.preventDefault();
  attempt(async () => {
    await api('POST', '/api/v1/me/password', { old_password: $('#own-pw-old').value, new_password: $('#own-pw-new').value });
    $('#own-pw-old').value = $('#own-pw-new').value = '';
    toast('密码已修改');
  });
});

// ------------------------------------------------------------------ start

if (session.access) {
  enter().catch(() => { session.clear(); showLogin(); });
} else {
  showLogin();
}
