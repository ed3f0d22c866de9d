// The chat page: conversations in a sidebar (history from /conversations), the current
// one in the URL (`?c=<id>`), replies streamed from /stream and rendered as Markdown,
// what the bot remembers (/memories) with "forget me", and sign-in when JWT is on.
//
// Text from the model or the user only ever reaches the page as Text nodes
// (textContent, or markdown.js which builds nodes the same way): never innerHTML.
//
// /stream is read with fetch rather than EventSource, because EventSource can neither
// send the Authorization header (the token would go in the URL, and into access logs)
// nor tell a refused token (401) from a network failure; reconnecting with
// Last-Event-ID is done here instead.

import { renderMarkdown } from "./markdown.js";

const $ = (id) => document.getElementById(id);
const ui = {
  log: $("log"),
  error: $("error"),
  form: $("form"),
  input: $("message"),
  send: $("send"),
  connection: $("connection"),
  newChat: $("new-chat"),
  conversations: $("conversations"),
  moreConversations: $("more-conversations"),
  historyNotice: $("history-notice"),
  signIn: $("signin"),
  signInForm: $("signin-form"),
  signInMessage: $("signin-message"),
  tokenInput: $("token"),
  signOut: $("signout"),
  account: $("account"),
  openMemories: $("open-memories"),
  memories: $("memories"),
  memoryForm: $("memory-form"),
  memoryQuery: $("memory-q"),
  memoryList: $("memory-list"),
  memoryStatus: $("memory-status"),
  forgetMe: $("forget-me"),
  closeMemories: $("close-memories"),
  confirm: $("confirm"),
  confirmText: $("confirm-text"),
  confirmOk: $("confirm-ok"),
  confirmCancel: $("confirm-cancel"),
};

/** A reply that has not finished after this long frees the send button again (the façade's reply timeout). */
const REPLY_PATIENCE_MS = 120_000;
/** No byte (not even a heartbeat) for this long: the connection is dead, reconnect. */
const STREAM_SILENCE_MS = 45_000;
const TOKEN_KEY = "token";

// ---------------------------------------------------------------- access token

/** Takes `#token=…` from the URL (a link from a sign-in service) into this tab only, and out of the URL. */
function takeTokenFromFragment() {
  const fragment = new URLSearchParams(location.hash.slice(1));
  if (!fragment.has("token")) return;
  const token = fragment.get("token").trim();
  if (token) sessionStorage.setItem(TOKEN_KEY, token);
  fragment.delete("token");
  const rest = fragment.toString();
  history.replaceState(history.state, "", location.pathname + location.search + (rest ? "#" + rest : ""));
}

function token() {
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

function withAuth(headers) {
  const t = token();
  if (t) headers.authorization = "Bearer " + t;
  return headers;
}

function showAccount() {
  ui.account.textContent = token() ? "Token set" : "Sign in";
  ui.signOut.hidden = !token();
}

/** A 401: says why and asks for a token. */
function needSignIn(failure) {
  const detail = failure.describe();
  ui.signInMessage.textContent = token()
    ? "The gateway refused your token: " + detail + ". Paste a new token to go on."
    : "Sign-in needed: this gateway asks for an access token (" + detail + "). Paste it below.";
  ui.signIn.hidden = false;
  document.body.dataset.auth = "needed";
  ui.tokenInput.focus();
}

ui.signInForm.addEventListener("submit", (event) => {
  event.preventDefault();
  const value = ui.tokenInput.value.trim();
  if (!value) return;
  sessionStorage.setItem(TOKEN_KEY, value);
  ui.tokenInput.value = "";
  ui.signIn.hidden = true;
  document.body.dataset.auth = "given";
  showAccount();
  clearError();
  loadConversations(false);
  openConversation(conversationId, { push: false });
});

ui.signOut.addEventListener("click", () => {
  sessionStorage.removeItem(TOKEN_KEY);
  showAccount();
  ui.signInMessage.textContent = "Signed out: the token is removed from this tab.";
  ui.signIn.hidden = false;
});

ui.account.addEventListener("click", () => {
  ui.signIn.hidden = !ui.signIn.hidden;
  if (!ui.signIn.hidden) {
    ui.signInMessage.textContent = "Paste an access token (a JWT). It is kept in this tab only.";
    ui.tokenInput.focus();
  }
});

// ---------------------------------------------------------------- API calls

/** A failed call: its status, the gateway's error code and message, and the trace to quote in a bug report. */
class ApiFailure extends Error {
  constructor(status, code, message, traceId) {
    super(message);
    this.status = status;
    this.code = code;
    this.traceId = traceId;
  }

  describe() {
    const parts = [this.status ? String(this.status) : "", this.code, this.traceId ? "trace " + this.traceId : ""];
    return this.message + " (" + parts.filter(Boolean).join(" ") + ")";
  }
}

async function failureOf(response) {
  let code = "http_" + response.status;
  let message = response.statusText || "request failed";
  let traceId = response.headers.get("x-trace-id") || "";
  try {
    const body = await response.json();
    if (body && body.error) {
      code = body.error.code || code;
      message = body.error.message || message;
      traceId = body.error.trace_id || traceId;
    }
  } catch {
    // Not a JSON error body (a proxy's page, a route this gateway does not have).
  }
  return new ApiFailure(response.status, code, message, traceId);
}

/** Calls the gateway; the parsed JSON answer, or throws an ApiFailure (a 401 also asks for a token). */
async function api(method, path, body) {
  const headers = withAuth(body === undefined ? {} : { "content-type": "application/json" });
  let response;
  try {
    response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: "no-store",
    });
  } catch {
    throw new ApiFailure(0, "unreachable", "the gateway is unreachable", "");
  }
  if (!response.ok) {
    const failure = await failureOf(response);
    if (failure.status === 401) needSignIn(failure);
    throw failure;
  }
  return response.json();
}

/** True for failures that mean "history is not available here now" rather than "you did something wrong". */
function historyUnavailable(failure) {
  return failure.status === 503 || failure.status === 0 || (failure.status === 404 && failure.code !== "unknown_conversation");
}

function showError(text) {
  ui.error.textContent = text;
}

function clearError() {
  ui.error.textContent = "";
}

// ---------------------------------------------------------------- small helpers

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function when(ts) {
  const date = new Date(ts);
  if (Number.isNaN(date.getTime())) return "";
  const today = new Date();
  return date.toDateString() === today.toDateString()
    ? date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })
    : date.toLocaleDateString([], { month: "short", day: "numeric" });
}

function shorten(text, length) {
  const flat = text.replace(/\s+/g, " ").trim();
  return flat.length > length ? flat.slice(0, length - 1) + "…" : flat;
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

function conversationInUrl() {
  const id = new URLSearchParams(location.search).get("c");
  return id && UUID.test(id) ? id.toLowerCase() : null;
}

function setUrl(id, push) {
  const url = location.pathname + (id ? "?c=" + encodeURIComponent(id) : "");
  if (url === location.pathname + location.search) return;
  if (push) history.pushState(null, "", url);
  else history.replaceState(null, "", url);
}

/** A confirmation in an in-page dialog (not window.confirm, which blocks the page and its streams). */
function confirmAction(text, action) {
  return new Promise((resolve) => {
    ui.confirmText.textContent = text;
    ui.confirmOk.textContent = action;
    ui.confirm.returnValue = "";
    ui.confirm.addEventListener("close", () => resolve(ui.confirm.returnValue === "ok"), { once: true });
    ui.confirm.showModal();
  });
}
ui.confirmOk.addEventListener("click", () => ui.confirm.close("ok"));
ui.confirmCancel.addEventListener("click", () => ui.confirm.close("cancel"));

// ---------------------------------------------------------------- the conversation shown

let conversationId = null;
/** Bumped on every switch: answers that arrive for a conversation no longer shown are dropped. */
let generation = 0;
let stream = null;
/** message id -> the turn showing its reply. */
const replies = new Map();
let sending = false;
/** The message whose reply is awaited (the send button stays disabled meanwhile). */
let pending = null;
let pendingTimer = 0;

function updateSendState() {
  const busy = sending || pending !== null;
  ui.send.disabled = busy;
  ui.send.setAttribute("aria-busy", String(busy));
  ui.send.textContent = sending ? "Sending…" : "Send";
}

function nearBottom() {
  return ui.log.scrollHeight - ui.log.scrollTop - ui.log.clientHeight < 80;
}

function addTurn(role) {
  const follow = nearBottom();
  const turn = element("div", "turn " + role);
  const bubble = element("div", "bubble " + role);
  const note = element("div", "note");
  note.hidden = true;
  turn.append(bubble, note);
  ui.log.appendChild(turn);
  if (follow) ui.log.scrollTop = ui.log.scrollHeight;
  return { turn, bubble, note, text: "", done: false, timer: 0 };
}

/** The user's own text is shown exactly as typed (no Markdown). */
function userTurn(text, messageId) {
  const turn = addTurn("user");
  turn.bubble.textContent = text;
  if (messageId) turn.bubble.dataset.messageId = messageId;
  return turn;
}

function replyTurn(messageId) {
  let turn = replies.get(messageId);
  if (!turn) {
    turn = addTurn("assistant");
    turn.bubble.dataset.messageId = messageId;
    turn.bubble.dataset.done = "false";
    replies.set(messageId, turn);
  }
  return turn;
}

function setNote(turn, kind, text) {
  turn.note.hidden = false;
  turn.note.dataset.kind = kind;
  turn.note.textContent = text;
}

function render(turn) {
  const follow = nearBottom();
  turn.bubble.replaceChildren(renderMarkdown(turn.text));
  if (follow) ui.log.scrollTop = ui.log.scrollHeight;
}

/** Re-renders a streaming reply at most every 30 ms, not once per token. */
function renderSoon(turn) {
  if (turn.timer) return;
  turn.timer = setTimeout(() => {
    turn.timer = 0;
    render(turn);
  }, 30);
}

function finish(turn, messageId) {
  turn.done = true;
  turn.bubble.dataset.done = "true";
  clearTimeout(turn.timer);
  turn.timer = 0;
  if (pending === messageId) {
    pending = null;
    clearTimeout(pendingTimer);
    updateSendState();
  }
}

function awaitReply(messageId) {
  pending = messageId;
  clearTimeout(pendingTimer);
  pendingTimer = setTimeout(() => {
    const turn = replies.get(messageId);
    if (turn && !turn.done) setNote(turn, "slow", "No reply yet; it may still come. You can send another message.");
    pending = null;
    updateSendState();
  }, REPLY_PATIENCE_MS);
  updateSendState();
}

const onEvent = {
  token(data) {
    const turn = replyTurn(data.message_id);
    if (turn.done) return; // a replay of a reply already shown whole
    turn.text += data.delta;
    renderSoon(turn);
  },
  reset(data) {
    const turn = replyTurn(data.message_id);
    if (turn.done) return;
    turn.text = "";
    turn.bubble.dataset.reset = "true";
    setNote(turn, "reset", "↻ This message was delivered again and is being answered anew; the partial reply was replaced.");
    render(turn);
  },
  gap(data) {
    if (!data.message_id) return; // a resumed stream missed events: the done events that follow are whole
    const turn = replyTurn(data.message_id);
    if (turn.done) return;
    setNote(turn, "gap", "Part of this reply was lost on the way; the whole text follows when it finishes.");
  },
  done(data) {
    const turn = replyTurn(data.message_id);
    if (turn.done) return;
    turn.text = data.text;
    if (turn.note.dataset.kind === "gap") turn.note.hidden = true;
    render(turn);
    finish(turn, data.message_id);
  },
  error(data) {
    const turn = replyTurn(data.message_id);
    if (turn.done) return;
    // What was streamed of a failed attempt is not the reply: show the failure instead.
    turn.text = "";
    turn.bubble.classList.add("failed");
    turn.bubble.dataset.code = data.code || "";
    turn.bubble.replaceChildren(element("p", "failure", "⚠ The reply failed: " + data.message + " (" + data.code + ")"));
    finish(turn, data.message_id);
  },
};

function setConnection(state) {
  ui.connection.dataset.state = state;
  ui.connection.hidden = state !== "reconnecting";
  ui.connection.textContent = state === "reconnecting" ? "Reconnecting to the gateway…" : "";
}

/** Reads /stream for one conversation until stopped, reconnecting with Last-Event-ID. */
class ReplyStream {
  constructor(id) {
    this.id = id;
    this.lastEventId = null;
    this.stopped = false;
    this.connection = null;
    this.failures = 0;
  }

  stop() {
    this.stopped = true;
    if (this.connection) this.connection.abort();
  }

  async run() {
    while (!this.stopped) {
      const connection = new AbortController();
      this.connection = connection;
      let silence = 0;
      const alive = () => {
        clearTimeout(silence);
        silence = setTimeout(() => connection.abort(), STREAM_SILENCE_MS);
      };
      try {
        const headers = withAuth({ accept: "text/event-stream" });
        if (this.lastEventId) headers["last-event-id"] = this.lastEventId;
        alive();
        const response = await fetch("/stream?conversation_id=" + encodeURIComponent(this.id), {
          headers,
          signal: connection.signal,
          cache: "no-store",
        });
        if (!response.ok) {
          const failure = await failureOf(response);
          if (failure.status === 401) needSignIn(failure);
          // Refused for good (not a passing outage): retrying would not help.
          if (failure.status >= 400 && failure.status < 500 && failure.status !== 408 && failure.status !== 429) {
            if (failure.status !== 401) showError("Replies cannot be streamed: " + failure.describe());
            setConnection("closed");
            return;
          }
          throw failure;
        }
        this.failures = 0;
        setConnection("live");
        await readEvents(response.body, (event) => this.dispatch(event), alive);
      } catch {
        // The gateway went away or restarts: reconnect below.
      } finally {
        clearTimeout(silence);
      }
      if (this.stopped) return;
      this.failures += 1;
      setConnection("reconnecting");
      await new Promise((resolve) => setTimeout(resolve, Math.min(250 * 2 ** this.failures, 5000)));
    }
  }

  dispatch(event) {
    if (this.stopped) return;
    if (event.id) this.lastEventId = event.id;
    if (event.type === "shutdown") {
      setConnection("reconnecting");
      return;
    }
    const handle = onEvent[event.type];
    if (!handle) return;
    let data;
    try {
      data = JSON.parse(event.data);
    } catch {
      return;
    }
    if (data.conversation_id && data.conversation_id !== this.id) return;
    handle(data);
  }
}

/** Parses Server-Sent Events from `body` (the text/event-stream format) and hands each to `onEvent`. */
async function readEvents(body, onEvent, onBytes) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let event = { type: "", data: [], id: null };
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    onBytes();
    buffer += value;
    let newline;
    while ((newline = buffer.indexOf("\n")) !== -1) {
      const line = buffer.slice(0, newline).replace(/\r$/, "");
      buffer = buffer.slice(newline + 1);
      if (line === "") {
        if (event.data.length) onEvent({ type: event.type || "message", data: event.data.join("\n"), id: event.id });
        event = { type: "", data: [], id: null };
      } else if (!line.startsWith(":")) {
        const colon = line.indexOf(":");
        const field = colon === -1 ? line : line.slice(0, colon);
        let value = colon === -1 ? "" : line.slice(colon + 1);
        if (value.startsWith(" ")) value = value.slice(1);
        if (field === "event") event.type = value;
        else if (field === "data") event.data.push(value);
        else if (field === "id") event.id = value;
      }
    }
  }
}

/** Every page of a conversation's messages, oldest first. */
async function loadMessages(id) {
  const messages = [];
  let cursor = null;
  for (let page = 0; page < 20; page += 1) {
    const answer = await api(
      "GET",
      "/conversations/" + encodeURIComponent(id) + "/messages?limit=100" + (cursor ? "&cursor=" + encodeURIComponent(cursor) : ""),
    );
    messages.push(...answer.messages);
    cursor = answer.next_cursor;
    if (!cursor) break;
  }
  return messages;
}

function showHistoryMessage(message) {
  if (message.role === "user") {
    userTurn(message.text, message.message_id);
    return;
  }
  const turn = replyTurn(message.message_id);
  if (message.status === "streaming") {
    awaitReply(message.message_id); // the stream's replay fills it in
    return;
  }
  turn.text = message.text;
  render(turn);
  finish(turn, message.message_id);
}

/** Shows conversation `id` (null: a new chat): its history, then its live replies. */
async function openConversation(id, { push }) {
  generation += 1;
  const current = generation;
  if (stream) stream.stop();
  stream = null;
  conversationId = id;
  replies.clear();
  pending = null;
  clearTimeout(pendingTimer);
  updateSendState();
  ui.log.replaceChildren();
  clearError();
  setConnection("idle");
  setUrl(id, push);
  markCurrent();
  if (!id) {
    ui.log.dataset.state = "empty";
    ui.input.focus();
    return;
  }
  ui.log.dataset.state = "loading";
  try {
    const messages = await loadMessages(id);
    if (current !== generation) return;
    messages.forEach(showHistoryMessage);
    ui.log.scrollTop = ui.log.scrollHeight;
  } catch (failure) {
    if (current !== generation) return;
    if (failure.status === 404 && failure.code === "unknown_conversation") {
      showError("This conversation does not exist, was deleted, or belongs to someone else.");
      openConversation(null, { push: false });
      return;
    }
    if (failure.status === 401) {
      ui.log.dataset.state = "signed-out";
      return;
    }
    if (historyUnavailable(failure)) {
      quietNotice("Earlier messages cannot be shown right now: " + failure.describe() + ". New replies still stream.");
    } else {
      showError("Could not load this conversation: " + failure.describe());
    }
  }
  ui.log.dataset.state = "loaded";
  stream = new ReplyStream(id);
  stream.run();
}

window.addEventListener("popstate", () => openConversation(conversationInUrl(), { push: false }));
// A sign-in link opened in a tab already showing the page changes only the fragment.
window.addEventListener("hashchange", () => {
  if (!new URLSearchParams(location.hash.slice(1)).has("token")) return;
  takeTokenFromFragment();
  ui.signIn.hidden = true;
  showAccount();
  loadConversations(false);
  openConversation(conversationId, { push: false });
});
ui.newChat.addEventListener("click", () => openConversation(null, { push: true }));

// ---------------------------------------------------------------- sending

async function send() {
  const text = ui.input.value;
  if (sending || pending !== null || !text.trim()) return;
  sending = true;
  updateSendState();
  clearError();
  const current = generation;
  const body = conversationId ? { conversation_id: conversationId, text } : { text };
  try {
    const answer = await api("POST", "/chat", body);
    if (current !== generation) return; // the user moved to another conversation meanwhile
    ui.input.value = "";
    fitInput();
    const isNew = !conversationId;
    userTurn(text, answer.message_id);
    replyTurn(answer.message_id);
    awaitReply(answer.message_id);
    if (isNew) {
      conversationId = answer.conversation_id;
      setUrl(conversationId, true);
      ui.log.dataset.state = "loaded";
      // The stream replays the conversation's recent events, so a reply that started
      // before it connected is not missed.
      stream = new ReplyStream(conversationId);
      stream.run();
    }
    sidebarTouch(conversationId, text);
  } catch (failure) {
    showError("Not sent: " + (failure.describe ? failure.describe() : String(failure)));
  } finally {
    sending = false;
    updateSendState();
  }
}

ui.form.addEventListener("submit", (event) => {
  event.preventDefault();
  send();
});

// Enter sends, Shift+Enter is a new line (and Enter while composing with an IME is the IME's).
ui.input.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    send();
  }
});

/** Grows the input with its text, up to 8 lines. */
function fitInput() {
  ui.input.rows = Math.min(8, Math.max(1, ui.input.value.split("\n").length));
}
ui.input.addEventListener("input", fitInput);

// ---------------------------------------------------------------- the sidebar

let conversationsCursor = null;

function quietNotice(text) {
  ui.historyNotice.textContent = text;
  ui.historyNotice.hidden = !text;
}

function markCurrent() {
  for (const item of ui.conversations.children) {
    const current = item.dataset.id === conversationId;
    item.classList.toggle("current", current);
    item.querySelector(".open").setAttribute("aria-current", current ? "page" : "false");
  }
}

function conversationItem(conversation) {
  const item = element("li", "conversation");
  item.dataset.id = conversation.conversation_id;
  const open = element("button", "open");
  open.type = "button";
  open.title = conversation.title || "";
  open.append(element("span", "title", conversation.title || "(untitled)"), element("time", "when", when(conversation.last_ts)));
  open.addEventListener("click", () => {
    if (item.dataset.id !== conversationId) openConversation(item.dataset.id, { push: true });
  });
  const remove = element("button", "delete", "✕");
  remove.type = "button";
  remove.title = "Delete this conversation";
  remove.setAttribute("aria-label", "Delete conversation: " + (conversation.title || ""));
  remove.addEventListener("click", () => deleteConversation(item));
  item.append(open, remove);
  return item;
}

/** Puts the conversation at the top of the sidebar (new, or just written to). */
function sidebarTouch(id, text) {
  let item = [...ui.conversations.children].find((li) => li.dataset.id === id);
  if (!item) item = conversationItem({ conversation_id: id, title: shorten(text, 60), last_ts: new Date().toISOString() });
  else item.querySelector(".when").textContent = when(new Date().toISOString());
  ui.conversations.prepend(item);
  markCurrent();
}

async function loadConversations(more) {
  try {
    const answer = await api(
      "GET",
      "/conversations?limit=30" + (more && conversationsCursor ? "&cursor=" + encodeURIComponent(conversationsCursor) : ""),
    );
    if (!more) ui.conversations.replaceChildren();
    const shown = new Set([...ui.conversations.children].map((li) => li.dataset.id));
    for (const conversation of answer.conversations) {
      if (!shown.has(conversation.conversation_id)) ui.conversations.appendChild(conversationItem(conversation));
    }
    conversationsCursor = answer.next_cursor;
    ui.moreConversations.hidden = !conversationsCursor;
    quietNotice("");
    markCurrent();
  } catch (failure) {
    if (failure.status === 401) quietNotice("Sign in to see your conversations.");
    else quietNotice("History is unavailable right now (" + failure.describe() + "); chatting still works.");
  }
}
ui.moreConversations.addEventListener("click", () => loadConversations(true));

async function deleteConversation(item) {
  const title = item.querySelector(".title").textContent;
  if (!(await confirmAction("Delete “" + title + "”? Its messages and what the bot remembers from it are deleted for good.", "Delete"))) return;
  try {
    await api("DELETE", "/conversations/" + encodeURIComponent(item.dataset.id));
    item.remove();
    if (item.dataset.id === conversationId) openConversation(null, { push: true });
  } catch (failure) {
    showError("Could not delete the conversation: " + failure.describe());
  }
}

// ---------------------------------------------------------------- what the bot remembers

async function loadMemories() {
  const q = ui.memoryQuery.value.trim();
  ui.memoryStatus.textContent = "Loading…";
  ui.memoryList.replaceChildren();
  try {
    const answer = await api("GET", "/memories?limit=50" + (q ? "&q=" + encodeURIComponent(q) : ""));
    for (const memory of answer.memories) {
      const item = element("li", "memory " + (memory.role === "user" ? "user" : "assistant"));
      item.appendChild(element("p", "memory-text", memory.text));
      const meta = element("p", "meta");
      meta.appendChild(element("span", "", (memory.role === "user" ? "you" : "the bot") + " · " + when(memory.ts)));
      if (typeof memory.score === "number") meta.appendChild(element("span", "score", " · score " + memory.score.toFixed(2)));
      if (memory.conversation_id && UUID.test(memory.conversation_id)) {
        const open = element("a", "", "open the conversation");
        open.href = "?c=" + encodeURIComponent(memory.conversation_id);
        open.addEventListener("click", (event) => {
          event.preventDefault();
          ui.memories.close();
          openConversation(memory.conversation_id.toLowerCase(), { push: true });
        });
        meta.append(" · ", open);
      }
      item.appendChild(meta);
      ui.memoryList.appendChild(item);
    }
    ui.memoryStatus.textContent = answer.memories.length
      ? ""
      : q ? "Nothing remembered matches “" + q + "”." : "Nothing is remembered about you.";
  } catch (failure) {
    ui.memoryStatus.textContent = "Could not load what is remembered: " + failure.describe();
  }
}

ui.openMemories.addEventListener("click", () => {
  ui.memories.showModal();
  loadMemories();
});
ui.closeMemories.addEventListener("click", () => ui.memories.close());
ui.memoryForm.addEventListener("submit", (event) => {
  event.preventDefault();
  loadMemories();
});

ui.forgetMe.addEventListener("click", async () => {
  const sure = await confirmAction(
    "Forget everything about you? All your conversations and everything the bot remembers are deleted for good.",
    "Forget me",
  );
  if (!sure) return;
  ui.memoryStatus.textContent = "Forgetting…";
  try {
    const answer = await api("DELETE", "/memories");
    ui.memoryList.replaceChildren();
    ui.memoryStatus.textContent = "Forgotten: your conversations and memories are deleted (deletion " + answer.deletion_id + ").";
    ui.memoryStatus.dataset.deletionId = answer.deletion_id;
    ui.conversations.replaceChildren();
    ui.moreConversations.hidden = true;
    openConversation(null, { push: true });
  } catch (failure) {
    ui.memoryStatus.textContent = "Could not forget: " + failure.describe();
  }
});

// ---------------------------------------------------------------- start

takeTokenFromFragment();
showAccount();
updateSendState();
loadConversations(false);
openConversation(conversationInUrl(), { push: false });
