// The demo page: sign in, subscribe, watch notifications arrive, publish (dev mode). Uses notifier.js as any
// frontend would.
import { NotifierClient } from './notifier.js';

const MAX_NOTES = 100;
const $ = (selector) => /** @type {HTMLElement} */ (document.querySelector(selector));

/** @type {NotifierClient | null} */
let client = null;
/** topic -> chip element */
const chips = new Map();
let received = 0;

const config = await fetch('/demo/config')
  .then((response) => (response.ok ? response.json() : { dev: false }))
  .catch(() => ({ dev: false }));
for (const element of document.querySelectorAll(config.dev ? '.dev-only' : '.token-only')) element.hidden = false;
for (const element of document.querySelectorAll(config.dev ? '.token-only textarea' : '.dev-only input')) {
  element.removeAttribute('required');
}

// Connection state.

const STATE_LABELS = { connecting: 'Connecting…', open: 'Connected', reconnecting: 'Reconnecting', closed: 'Not connected' };
const TRANSPORT_LABELS = { websocket: 'WebSocket', sse: 'HTTP stream' };

/** The client's hint after handshakes kept failing (a refused Origin, a wrong URL); cleared once connected. */
let handshakeHint = '';

function showState(state, detail = {}) {
  const badge = $('#state');
  badge.dataset.state = state;
  badge.classList.toggle('failed', state === 'closed' && Boolean(detail.error));
  let label = STATE_LABELS[state] ?? state;
  if (state === 'reconnecting' && detail.delay !== undefined) label += ` in ${(detail.delay / 1000).toFixed(1)} s`;
  if (state === 'closed' && detail.error) label = `Stopped: ${detail.error.code}`;
  badge.querySelector('.label').textContent = label;
  badge.title = detail.code ? `last close code ${detail.code}${detail.reason ? ` (${detail.reason})` : ''}` : '';
  if (state === 'open') handshakeHint = '';
  if (handshakeHint && state !== 'open') badge.title = handshakeHint; // why "Reconnecting" lasts
  if (state === 'reconnecting' || state === 'closed') {
    for (const chip of chips.values()) chip.dataset.status = 'pending';
  }
  showTransport(state, detail.transport);
}

/** Which transport the connection uses: the client falls back to the HTTP stream where WebSockets are blocked. */
function showTransport(state, transport) {
  const badge = $('#transport');
  badge.hidden = state !== 'open' || !transport;
  if (badge.hidden) return;
  badge.dataset.transport = transport;
  badge.textContent = TRANSPORT_LABELS[transport] ?? transport;
}

// Signing in and out.

function patternsFromInput() {
  return $('#patterns')
    .value.split(/[\s,]+/)
    .map((pattern) => pattern.trim())
    .filter(Boolean);
}

async function devToken(user, topics) {
  const response = await fetch('/dev/token', {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ user, topics, ttl_s: 900 }),
  });
  const body = await response.json();
  if (!response.ok) throw new Error(body.message ?? `HTTP ${response.status}`);
  return body.token;
}

$('#sign-in').addEventListener('submit', (submit) => {
  submit.preventDefault();
  const options = { url: '/ws' };
  if (config.dev) {
    const user = $('#user').value.trim();
    const topics = patternsFromInput();
    options.getToken = () => devToken(user, topics); // called on every connect and before the token expires
  } else {
    options.token = $('#token').value.trim();
  }
  start(options);
});

function start(options) {
  client?.close();
  client = new NotifierClient(options);
  client.on('state', showState);
  client.on('welcome', ({ user }) => {
    const who = $('#who');
    who.replaceChildren('Signed in as ', Object.assign(document.createElement('strong'), { textContent: user }));
    who.hidden = false;
    $('#publish-topic').value ||= `user.${user}`;
  });
  client.on('subscribed', ({ topic }) => chipFor(topic).dataset.status = 'subscribed');
  client.on('event', showNotification);
  client.on('unsubscribed', ({ topic }) => dropChip(topic)); // the server took it away
  client.on('error', (error) => {
    if (error.code === 'handshake_failed') $('#state').title = handshakeHint = error.message;
    if (!error.topic) return;
    showSubscribeError(error);
    if (error.code !== 'unavailable') dropChip(error.topic); // refused or no longer granted: the client let it go
  });
  client.connect();
  $('#sign-in').hidden = true;
  $('#subscribe').hidden = false;
  $('#publish').hidden = false;
  $('#sign-out').hidden = false;
}

$('#sign-out').addEventListener('click', () => {
  client?.close();
  client = null;
  for (const chip of chips.values()) chip.remove();
  chips.clear();
  refreshTopicList();
  $('#who').hidden = true;
  $('#sign-out').hidden = true;
  $('#sign-in').hidden = false;
  $('#subscribe').hidden = true;
  $('#publish').hidden = true;
});

// Subscriptions.

function chipFor(topic) {
  let chip = chips.get(topic);
  if (chip) return chip;
  chip = document.createElement('li');
  chip.className = 'sub';
  chip.dataset.topic = topic;
  chip.dataset.status = 'pending';
  chip.append(topic);
  if (topic.startsWith('user.') && topic.split('.').length === 2) {
    chip.append(Object.assign(document.createElement('span'), { className: 'auto', textContent: 'personal' }));
  } else {
    const remove = Object.assign(document.createElement('button'), { type: 'button', textContent: '×' });
    remove.title = `Unsubscribe from ${topic}`;
    remove.addEventListener('click', async () => {
      dropChip(topic);
      await client?.unsubscribe(topic).catch(() => {});
    });
    chip.append(remove);
  }
  chips.set(topic, chip);
  $('#subs').append(chip);
  refreshTopicList();
  return chip;
}

function dropChip(topic) {
  chips.get(topic)?.remove();
  chips.delete(topic);
  refreshTopicList();
}

function refreshTopicList() {
  $('#topic-list').replaceChildren(
    ...[...chips.keys()].map((topic) => Object.assign(document.createElement('option'), { value: topic })),
  );
}

function showSubscribeError(error) {
  const line = $('#subscribe-error');
  line.textContent = `${error.topic}: ${error.code} (${error.message})`;
  line.dataset.code = error.code;
  line.hidden = false;
}

$('#subscribe').addEventListener('submit', async (submit) => {
  submit.preventDefault();
  const input = /** @type {HTMLInputElement} */ ($('#topic'));
  const topic = input.value.trim();
  if (!topic || !client) return;
  $('#subscribe-error').hidden = true;
  const chip = chipFor(topic);
  try {
    await client.subscribe(topic);
    input.value = '';
  } catch (error) {
    dropChip(topic);
    showSubscribeError(error);
  }
});

// Notifications.

const PALETTE = ['#4f46e5', '#0891b2', '#16a34a', '#d97706', '#db2777', '#7c3aed', '#0d9488', '#dc2626'];

function colorFor(topic) {
  let hash = 0;
  for (const char of topic) hash = (hash * 31 + char.charCodeAt(0)) >>> 0;
  return PALETTE[hash % PALETTE.length];
}

function headline(data) {
  if (typeof data === 'string') return data;
  if (data && typeof data === 'object') {
    for (const key of ['title', 'text', 'message']) if (typeof data[key] === 'string') return data[key];
  }
  return JSON.stringify(data);
}

function showNotification(event) {
  const time = new Date(event.ts);
  const note = document.createElement('li');
  note.className = 'note';
  note.dataset.topic = event.topic;
  note.dataset.id = event.id;

  const icon = document.createElement('span');
  icon.className = 'icon';
  icon.style.background = colorFor(event.topic);
  icon.textContent = event.topic.split('.').at(-1).slice(0, 1).toUpperCase();

  const title = Object.assign(document.createElement('span'), { className: 'title', textContent: headline(event.data) });
  const meta = document.createElement('span');
  meta.className = 'meta';
  meta.append(Object.assign(document.createElement('time'), {
    dateTime: time.toISOString(),
    textContent: time.toLocaleTimeString(),
  }));
  const topic = Object.assign(document.createElement('span'), { className: 'topic', textContent: event.topic });
  const data = Object.assign(document.createElement('pre'), {
    className: 'data',
    textContent: JSON.stringify(event.data, null, 2),
  });
  note.append(icon, title, meta, topic, data);

  const feed = $('#feed');
  feed.prepend(note);
  while (feed.children.length > MAX_NOTES) feed.lastElementChild?.remove();
  received += 1;
  $('#count').textContent = String(received);
  $('#empty').hidden = true;
  toast(event);
}

function toast(event) {
  const item = document.createElement('div');
  item.className = 'toast';
  item.append(
    Object.assign(document.createElement('span'), { className: 'topic', textContent: event.topic }),
    headline(event.data),
  );
  const toasts = $('#toasts');
  toasts.append(item);
  while (toasts.children.length > 3) toasts.firstElementChild?.remove();
  setTimeout(() => item.classList.add('leaving'), 3000);
  setTimeout(() => item.remove(), 3500);
}

$('#clear').addEventListener('click', () => {
  $('#feed').replaceChildren();
  received = 0;
  $('#count').textContent = '0';
  $('#empty').hidden = false;
});

// Publishing (dev mode).

$('#publish').addEventListener('submit', async (submit) => {
  submit.preventDefault();
  const result = $('#publish-result');
  const topic = /** @type {HTMLInputElement} */ ($('#publish-topic')).value.trim();
  let data;
  try {
    data = JSON.parse(/** @type {HTMLTextAreaElement} */ ($('#publish-data')).value);
  } catch {
    result.textContent = 'Data must be JSON, e.g. {"text": "hi"} or "hi"';
    return;
  }
  result.textContent = 'Publishing…';
  const response = await fetch('/dev/publish', {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ topic, data }),
  });
  const body = await response.json().catch(() => ({}));
  result.textContent = response.ok ? `Published to ${body.topic}` : `${body.error}: ${body.message}`;
});
