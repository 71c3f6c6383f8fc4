// Spaceraft chat page: a small client of the gateway's WebSocket protocol
// (docs/protocol.md). No dependencies, no build step.
(() => {
  'use strict';

  const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;
  const BACKOFF_MIN_MS = 250;
  const BACKOFF_MAX_MS = 10000;
  const WELCOME_TIMEOUT_MS = 15000;
  const KEEPALIVE_MS = 30000; // a `ping`, so a dead link is noticed
  const REFRESH_EVERY = 10; // every 10th keepalive is a `spaces` request: new spaces show up
  const STALE_MS = 75000; // nothing received for this long: the connection is dead
  const FRAME_BYTES_MAX = 256 * 1024;
  const INITIAL_BACKLOG = 50; // messages shown when a space is first subscribed
  const KEEP_PER_SPACE = 1000; // messages kept in memory per space
  const POST_RETRIES_MAX = 5;

  const $ = (id) => document.getElementById(id);
  const ui = {
    login: $('login'), name: $('name'), connect: $('connect'), status: $('status'),
    spaces: $('spaces'), title: $('space-title'), members: $('space-members'),
    log: $('log'), note: $('note'), messages: $('messages'), pending: $('pending'),
    error: $('error'), composer: $('composer'), body: $('body'), send: $('send'),
  };

  const state = {
    user: null,
    token: null, // the hello's token
    tokenUser: null, // the name the token was minted for
    region: null,
    ws: null,
    welcomed: false,
    gateways: [], // other gateways' WebSocket URLs, from welcome
    attempt: 0, // consecutive failed connections, drives the backoff
    reconnectAt: 0,
    lastFrameAt: 0,
    spaces: new Map(), // name -> space record (see spaceOf)
    order: [], // the user's spaces, in the gateway's order
    selected: null,
    pending: new Map(), // ref -> post not yet acknowledged
  };

  const timers = { reconnect: null, countdown: null, welcome: null, keepalive: null, error: null };
  let refSeq = 0;
  let keepaliveTicks = 0;
  let helloCursors = new Set();
  const spaceButtons = new Map(); // name -> button in #spaces, updated in place

  // ---- state ---------------------------------------------------------------

  function spaceOf(name) {
    let sp = state.spaces.get(name);
    if (!sp) {
      sp = {
        name,
        info: null, // SPACE object from welcome/spaces
        member: false,
        wanted: false, // a subscription is wanted (and resumed on reconnect)
        subscribed: false,
        caughtUp: false,
        cursor: null, // last seq received
        readSeq: null, // last seq the user has seen on screen
        unread: 0,
        messages: [],
        note: '',
      };
      state.spaces.set(name, sp);
    }
    return sp;
  }

  function storageGet(store, key) {
    try { return store.getItem(key); } catch (_) { return null; }
  }
  function storageSet(store, key, value) {
    try { store.setItem(key, value); } catch (_) { /* private mode: ignore */ }
  }

  function newKey() {
    if (window.crypto && typeof crypto.randomUUID === 'function') return crypto.randomUUID();
    const bytes = new Uint8Array(16);
    if (window.crypto && crypto.getRandomValues) crypto.getRandomValues(bytes);
    else for (let i = 0; i < bytes.length; i++) bytes[i] = Math.floor(Math.random() * 256);
    return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
  }

  function jittered(baseMs) {
    return baseMs - Math.random() * baseMs / 2; // up to half off, so clients spread out
  }

  // ---- connection ----------------------------------------------------------

  // The page's own gateway first; after a failure, the other gateways it
  // named in welcome, in turn, so a dead gateway's pages move elsewhere.
  function wsUrl() {
    const home = (location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + '/v1/ws';
    const candidates = [home].concat(state.gateways.filter((url) => url !== home));
    return candidates[state.attempt % candidates.length];
  }

  function isLive() {
    return state.ws !== null && state.ws.readyState === WebSocket.OPEN && state.welcomed;
  }

  function send(frame) {
    const ws = state.ws;
    if (!ws || ws.readyState !== WebSocket.OPEN) return false;
    ws.send(JSON.stringify(frame));
    return true;
  }

  // The token the hello carries: `?token=` (from an identity provider), or
  // one from the gateway's development login for the chosen name; none when
  // the gateway has no login (a cluster run with --insecure believes names).
  async function ensureToken() {
    const fromUrl = new URLSearchParams(location.search).get('token');
    if (fromUrl) {
      state.token = fromUrl;
      return;
    }
    if (state.token && state.tokenUser === state.user) return;
    state.token = null;
    try {
      const r = await fetch('/v1/login', {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ user: state.user }),
      });
      if (r.ok) {
        const j = await r.json();
        state.token = j.token;
        state.tokenUser = state.user;
      }
    } catch (e) {
      // No login here: the hello goes without a token.
    }
  }

  async function connect() {
    clearTimeout(timers.reconnect);
    clearInterval(timers.countdown);
    timers.reconnect = timers.countdown = null;
    setStatus('connecting', state.attempt ? 'reconnecting…' : 'connecting…');
    await ensureToken();

    let ws;
    try {
      ws = new WebSocket(wsUrl());
    } catch (e) {
      showError('cannot open a WebSocket: ' + e.message);
      scheduleReconnect();
      return;
    }
    state.ws = ws;
    state.welcomed = false;

    ws.onopen = () => {
      if (ws !== state.ws) return;
      state.lastFrameAt = Date.now();
      const hello = { type: 'hello', user: state.user };
      if (state.token) hello.token = state.token;
      const cursors = {};
      for (const sp of state.spaces.values()) {
        if (sp.wanted && sp.cursor !== null) cursors[sp.name] = sp.cursor;
      }
      helloCursors = new Set(Object.keys(cursors));
      if (helloCursors.size) hello.cursors = cursors;
      send(hello);
      timers.welcome = setTimeout(() => abandon(ws, 'no welcome from the gateway'), WELCOME_TIMEOUT_MS);
    };
    ws.onmessage = (ev) => {
      if (ws !== state.ws) return;
      state.lastFrameAt = Date.now();
      let frame;
      try { frame = JSON.parse(ev.data); } catch (_) { return; }
      if (frame && typeof frame.type === 'string') handle(frame);
    };
    ws.onclose = (ev) => {
      if (ws === state.ws) closed(ev.code, ev.reason);
    };
  }

  // Drop a connection that looks dead without waiting for the browser to notice.
  function abandon(ws, reason) {
    if (ws !== state.ws) return;
    try { ws.close(1000); } catch (_) { /* already closing */ }
    closed(1006, reason);
  }

  function closed(code, reason) {
    state.ws = null;
    state.welcomed = false;
    clearTimeout(timers.welcome);
    clearInterval(timers.keepalive);
    for (const sp of state.spaces.values()) {
      sp.subscribed = false;
      sp.caughtUp = false;
    }
    renderSpaces();
    if (code === 4000) {
      // A protocol error: reconnecting unchanged would fail the same way.
      setStatus('closed', 'disconnected: protocol error' + (reason ? ' (' + reason + ')' : ''));
      return;
    }
    scheduleReconnect(code, reason);
  }

  function scheduleReconnect(code, reason) {
    const base = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** state.attempt);
    const delay = jittered(base);
    state.attempt++;
    state.reconnectAt = Date.now() + delay;
    const why = {
      1001: 'the gateway is going away',
      1009: 'a frame was too big',
      4008: 'slow consumer',
    }[code] || (reason ? reason : code ? 'connection closed (' + code + ')' : '');
    const tick = () => {
      const left = Math.max(0, state.reconnectAt - Date.now());
      setStatus('reconnecting', 'reconnecting in ' + (left / 1000).toFixed(1) + ' s…', why);
    };
    tick();
    clearInterval(timers.countdown);
    timers.countdown = setInterval(tick, 100);
    clearTimeout(timers.reconnect);
    timers.reconnect = setTimeout(connect, delay);
  }

  function reset() {
    const ws = state.ws;
    state.ws = null;
    if (ws) { try { ws.close(1000); } catch (_) { /* ignore */ } }
    for (const t of ['reconnect', 'welcome']) clearTimeout(timers[t]);
    for (const t of ['countdown', 'keepalive']) clearInterval(timers[t]);
    for (const p of state.pending.values()) clearTimeout(p.timer);
    state.pending.clear();
    state.spaces.clear();
    state.order = [];
    state.region = null;
    state.welcomed = false;
    state.attempt = 0;
    state.selected = null;
    renderSpaces();
    renderMessages();
  }

  function keepalive() {
    const ws = state.ws;
    if (!ws || !state.welcomed) return;
    if (Date.now() - state.lastFrameAt > STALE_MS) {
      abandon(ws, 'the gateway stopped answering');
      return;
    }
    keepaliveTicks++;
    if (keepaliveTicks % REFRESH_EVERY === 0) send({ type: 'spaces', ref: 's' + (++refSeq) });
    else send({ type: 'ping', ref: 'k' + (++refSeq) });
  }

  // ---- frames from the gateway ---------------------------------------------

  function handle(f) {
    if ('space' in f && typeof f.space !== 'string') return;
    switch (f.type) {
      case 'welcome': return onWelcome(f);
      case 'spaces': return applySpaces(f.spaces || [], true);
      case 'subscribed': return onSubscribed(f);
      case 'caught_up': return onCaughtUp(f);
      case 'message': return onMessage(f);
      case 'unsubscribed': {
        const sp = spaceOf(f.space);
        sp.subscribed = sp.wanted = sp.caughtUp = false;
        return renderSpaces();
      }
      case 'posted': return onPosted(f);
      case 'error': return onError(f);
      default: return; // pong, history and future frames: nothing to do
    }
  }

  function onWelcome(f) {
    clearTimeout(timers.welcome);
    state.welcomed = true;
    state.attempt = 0;
    state.region = f.region || '?';
    if (Array.isArray(f.gateways) && f.gateways.length) state.gateways = f.gateways.slice();
    setStatus('connected', 'connected to ' + state.region, 'as ' + (f.user || state.user));
    clearInterval(timers.keepalive);
    timers.keepalive = setInterval(keepalive, KEEPALIVE_MS);

    applySpaces(f.spaces || [], false);
    for (const name of state.order) {
      const sp = spaceOf(name);
      if (helloCursors.has(name)) sp.wanted = true; // resumed by hello's cursors
      else subscribe(sp);
    }
    for (const p of state.pending.values()) {
      if (!p.timer) sendPost(p); // same key: commits at most once
    }
    if (!state.selected || !spaceOf(state.selected).member) {
      const wish = new URLSearchParams(location.search).get('space') || storageGet(localStorage, 'spaceraft.space');
      const pick = state.order.includes(wish) ? wish : state.order[0];
      if (pick) select(pick);
    } else {
      renderMessages();
    }
  }

  function applySpaces(list, subscribeNew) {
    const names = [];
    for (const info of list) {
      if (!info || typeof info.name !== 'string') continue;
      const sp = spaceOf(info.name);
      sp.info = info;
      sp.member = true;
      if (sp.readSeq === null) sp.readSeq = info.last_seq || 0; // older messages are not "unread"
      names.push(info.name);
    }
    const now = new Set(names);
    for (const sp of state.spaces.values()) {
      if (now.has(sp.name) || !sp.member) continue;
      sp.member = false; // no longer a member
      if (sp.subscribed) send({ type: 'unsubscribe', space: sp.name });
      sp.wanted = sp.subscribed = false;
    }
    state.order = names;
    if (subscribeNew && isLive()) {
      for (const name of names) {
        const sp = spaceOf(name);
        if (!sp.wanted) subscribe(sp);
      }
    }
    if (state.selected && !now.has(state.selected)) state.selected = null;
    renderSpaces();
    if (!state.selected) renderMessages();
    else renderHeader();
  }

  function subscribe(sp) {
    let after = sp.cursor;
    if (after === null) {
      const info = sp.info || {};
      after = Math.max(0, (info.last_seq || 0) - INITIAL_BACKLOG, (info.first_seq || 0) - 1);
    }
    sp.wanted = true;
    send({ type: 'subscribe', space: sp.name, after });
  }

  function onSubscribed(f) {
    const sp = spaceOf(f.space);
    sp.subscribed = sp.wanted = true;
    sp.caughtUp = false;
    const next = Number(f.next_seq) || 1;
    if (!f.resumed) {
      // The cursor fell behind retention: a discontinuity, start the view over.
      sp.messages = [];
      sp.cursor = next - 1;
      sp.note = next > 1 ? 'history before seq ' + next + ' was trimmed' : '';
      if (sp.info) sp.info.first_seq = next;
      if (state.selected === sp.name) renderMessages();
    } else if (sp.cursor === null || sp.cursor < next - 1) {
      sp.cursor = next - 1;
    }
    if (sp.info && f.last_seq > (sp.info.last_seq || 0)) sp.info.last_seq = f.last_seq;
    renderSpaces();
  }

  function onCaughtUp(f) {
    const sp = spaceOf(f.space);
    sp.caughtUp = true;
    if (sp.info && f.last_seq > (sp.info.last_seq || 0)) sp.info.last_seq = f.last_seq;
    renderSpaces();
  }

  function onMessage(f) {
    const sp = spaceOf(f.space);
    const seq = Number(f.seq);
    if (!Number.isFinite(seq) || (sp.cursor !== null && seq <= sp.cursor)) return; // duplicate
    sp.cursor = seq;
    const m = { seq, author: String(f.author || ''), body: String(f.body ?? ''), key: f.key || '' };
    sp.messages.push(m);
    const dropped = sp.messages.length > KEEP_PER_SPACE ? sp.messages.splice(0, sp.messages.length - KEEP_PER_SPACE).length : 0;
    if (sp.info && seq > (sp.info.last_seq || 0)) sp.info.last_seq = seq;

    // Our own post arrived: it no longer needs a "sending" placeholder.
    let ownPending = false;
    if (m.key && m.author === state.user) {
      for (const p of state.pending.values()) {
        if (p.key === m.key && p.space === sp.name) { p.committed = true; ownPending = true; }
      }
    }

    if (state.selected === sp.name) {
      const stick = nearBottom() || m.author === state.user;
      for (let i = 0; i < dropped && ui.messages.firstChild; i++) ui.messages.firstChild.remove();
      ui.messages.append(messageElement(m));
      if (ownPending) renderPending();
      sp.readSeq = seq;
      if (stick) scrollToBottom();
    } else if (sp.readSeq === null || seq > sp.readSeq) {
      sp.unread++;
      renderSpaces();
    }
  }

  function onPosted(f) {
    const p = state.pending.get(f.ref);
    if (!p) return;
    clearTimeout(p.timer);
    state.pending.delete(f.ref);
    if (p.attempts) ui.error.textContent = ''; // the "retrying" note is over
    if (state.selected === p.space) renderPending();
  }

  function onError(f) {
    const text = (f.space ? f.space + ': ' : '') + (f.message || f.code || 'error');
    const p = f.ref ? state.pending.get(f.ref) : null;
    if (p) return postFailed(p, f, text);

    if (f.space && !f.ref) {
      // About a subscription: that subscription has ended.
      const sp = spaceOf(f.space);
      sp.subscribed = sp.wanted = sp.caughtUp = false;
      if (f.code === 'trimmed') {
        sp.cursor = null;
        sp.messages = [];
        sp.note = 'older history was trimmed';
        if (state.selected === sp.name) renderMessages();
      }
      if ((f.code === 'unavailable' || f.code === 'trimmed') && sp.member) {
        setTimeout(() => { if (isLive() && !sp.wanted && sp.member) subscribe(sp); }, jittered(2000));
      }
      renderSpaces();
    }
    showError(text);
  }

  // ---- posting -------------------------------------------------------------

  function submitPost() {
    const body = ui.body.value;
    if (body.trim() === '') return;
    if (!state.user) return showError('pick a name and connect first');
    if (!state.selected) return showError('pick a space first');
    const p = { ref: 'p' + (++refSeq), space: state.selected, body, key: newKey(), attempts: 0, timer: null, committed: false };
    const frame = JSON.stringify({ type: 'post', ref: p.ref, space: p.space, body: p.body, key: p.key });
    if (new TextEncoder().encode(frame).length > FRAME_BYTES_MAX) return showError('message too long');
    state.pending.set(p.ref, p);
    ui.body.value = '';
    renderPending();
    scrollToBottom();
    sendPost(p);
  }

  function sendPost(p) {
    if (!isLive()) return; // sent again after the next welcome
    send({ type: 'post', ref: p.ref, space: p.space, body: p.body, key: p.key });
  }

  function postFailed(p, f, text) {
    if (f.code === 'unavailable' && p.attempts < POST_RETRIES_MAX) {
      p.attempts++;
      const delay = jittered(Math.min(BACKOFF_MAX_MS, 500 * 2 ** (p.attempts - 1)));
      p.timer = setTimeout(() => { p.timer = null; sendPost(p); }, delay);
      showError(text + ' (retrying)');
      return;
    }
    clearTimeout(p.timer);
    state.pending.delete(p.ref);
    if (state.selected === p.space) renderPending();
    if (ui.body.value === '' && !p.committed) ui.body.value = p.body; // give the text back
    showError('not sent: ' + text);
  }

  // ---- rendering -----------------------------------------------------------

  function setStatus(kind, text, detail) {
    ui.status.dataset.state = kind;
    ui.status.textContent = text;
    ui.status.title = detail || '';
  }

  function showError(text) {
    ui.error.textContent = text;
    clearTimeout(timers.error);
    timers.error = setTimeout(() => { ui.error.textContent = ''; }, 10000);
  }

  function renderSpaces() {
    let total = 0;
    state.order.forEach((name, i) => {
      const sp = spaceOf(name);
      let b = spaceButtons.get(name);
      if (!b) {
        b = document.createElement('button');
        b.type = 'button';
        b.className = 'space';
        b.dataset.space = name;
        const label = document.createElement('span');
        label.className = 'space-name';
        label.textContent = name;
        const badge = document.createElement('span');
        badge.className = 'unread';
        b.append(label, badge);
        spaceButtons.set(name, b);
      }
      if (ui.spaces.children[i] !== b) ui.spaces.insertBefore(b, ui.spaces.children[i] || null);
      b.classList.toggle('selected', state.selected === name);
      b.classList.toggle('live', sp.caughtUp);
      if (state.selected === name) b.setAttribute('aria-current', 'true');
      else b.removeAttribute('aria-current');
      const unread = state.selected === name ? 0 : sp.unread;
      total += unread;
      b.lastChild.textContent = unread ? (unread > 99 ? '99+' : String(unread)) : '';
      b.title = sp.info && Array.isArray(sp.info.members) ? 'members: ' + sp.info.members.join(', ') : '';
    });
    const keep = new Set(state.order);
    for (const [name, b] of spaceButtons) {
      if (!keep.has(name)) { b.remove(); spaceButtons.delete(name); }
    }
    document.title = total ? '(' + total + ') Spaceraft' : 'Spaceraft';
  }

  function renderHeader() {
    const sp = state.selected ? spaceOf(state.selected) : null;
    ui.title.textContent = sp ? '# ' + sp.name : state.user ? 'no space selected' : 'pick a name and connect';
    ui.members.textContent = sp && sp.info && Array.isArray(sp.info.members) ? sp.info.members.join(', ') : '';
    ui.body.placeholder = sp ? 'Message #' + sp.name : 'Write a message';
  }

  function messageElement(m) {
    const d = document.createElement('div');
    d.className = m.author === state.user ? 'message own' : 'message';
    d.dataset.seq = String(m.seq);
    const meta = document.createElement('div');
    meta.className = 'meta';
    const author = document.createElement('span');
    author.className = 'author';
    author.textContent = m.author;
    const seq = document.createElement('span');
    seq.className = 'seq';
    seq.textContent = '#' + m.seq;
    meta.append(author, seq);
    const text = document.createElement('div');
    text.className = 'text';
    text.textContent = m.body; // user data: text only, never HTML
    d.append(meta, text);
    return d;
  }

  function renderMessages() {
    renderHeader();
    const sp = state.selected ? spaceOf(state.selected) : null;
    ui.note.textContent = sp ? sp.note : '';
    ui.messages.replaceChildren(...(sp ? sp.messages.map(messageElement) : []));
    renderPending();
    scrollToBottom();
  }

  function renderPending() {
    const items = [];
    for (const p of state.pending.values()) {
      if (p.space !== state.selected || p.committed) continue;
      const d = document.createElement('div');
      d.className = 'pending';
      const meta = document.createElement('div');
      meta.className = 'meta';
      const author = document.createElement('span');
      author.className = 'author';
      author.textContent = state.user;
      const st = document.createElement('span');
      st.className = 'seq';
      st.textContent = p.attempts ? 'retrying…' : 'sending…';
      meta.append(author, st);
      const text = document.createElement('div');
      text.className = 'text';
      text.textContent = p.body;
      d.append(meta, text);
      items.push(d);
    }
    ui.pending.replaceChildren(...items);
  }

  function nearBottom() {
    return ui.log.scrollHeight - ui.log.scrollTop - ui.log.clientHeight < 48;
  }

  function scrollToBottom() {
    ui.log.scrollTop = ui.log.scrollHeight;
  }

  function select(name) {
    const sp = spaceOf(name);
    state.selected = name;
    storageSet(localStorage, 'spaceraft.space', name);
    sp.unread = 0;
    if (sp.cursor !== null) sp.readSeq = Math.max(sp.readSeq || 0, sp.cursor);
    renderSpaces();
    renderMessages();
    if (isLive() && !sp.wanted) subscribe(sp);
  }

  // ---- user input ----------------------------------------------------------

  ui.login.addEventListener('submit', (e) => {
    e.preventDefault();
    const name = ui.name.value.trim();
    if (!NAME_RE.test(name)) {
      showError('a name is 1 to 64 of a-z A-Z 0-9 . _ - and starts with a letter or digit');
      return;
    }
    storageSet(localStorage, 'spaceraft.user', name);
    ui.error.textContent = '';
    if (name !== state.user) {
      reset();
      state.user = name;
      renderMessages();
      connect();
    } else if (!state.ws) {
      state.attempt = 0; // waiting to reconnect, or stopped: try now
      connect();
    }
  });

  ui.spaces.addEventListener('click', (e) => {
    const b = e.target.closest('[data-space]');
    if (b) select(b.dataset.space);
  });

  ui.composer.addEventListener('submit', (e) => {
    e.preventDefault();
    submitPost();
  });

  ui.error.addEventListener('click', () => { ui.error.textContent = ''; });

  window.addEventListener('online', () => {
    if (state.user && !state.ws && timers.reconnect) connect();
  });

  // ---- start ---------------------------------------------------------------

  // The user a `?token=` names (its payload's `sub`), to fill in the name.
  function tokenSubject() {
    const token = new URLSearchParams(location.search).get('token');
    if (!token) return null;
    try {
      const payload = token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
      return JSON.parse(atob(payload)).sub || null;
    } catch (e) {
      return null;
    }
  }

  const fromUrl = new URLSearchParams(location.search).get('user') || tokenSubject();
  ui.name.value = fromUrl || storageGet(localStorage, 'spaceraft.user') || '';
  renderMessages();
  if (fromUrl && NAME_RE.test(fromUrl)) ui.login.requestSubmit ? ui.login.requestSubmit() : ui.connect.click();

  // A read-only handle for debugging from the console.
  window.spaceraft = Object.freeze({ get state() { return state; } });
})();
