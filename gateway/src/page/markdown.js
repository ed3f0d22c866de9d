// A small Markdown renderer for chat replies that builds DOM nodes only.
//
// Model and user text is never parsed as HTML: every piece of text becomes a Text
// node (createTextNode / textContent), and the only elements made are the fixed set
// below. Raw HTML in the source therefore shows as the characters typed. Links are
// kept only for http(s) URLs and open in a new tab without a referrer or an opener;
// images are never loaded (they become such links), so a reply cannot make the
// browser fetch anything or run anything.
//
// Supported: fenced code blocks, headings, paragraphs (a newline is a line break, as
// chat replies expect), bullet and numbered lists (nested by indentation),
// blockquotes, horizontal rules, pipe tables, and inline code, **strong**, *emphasis*,
// ~~strike~~, [links](https://…), <https://…> and bare https:// URLs.

const LIST_ITEM = /^( *)([-*+]|\d{1,9}[.)])( +|$)(.*)$/;
const FENCE = /^( {0,3})(`{3,}|~{3,})(.*)$/;
const HEADING = /^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$/;
const RULE = /^ {0,3}([-*_])(?:[ \t]*\1){2,}[ \t]*$/;
const QUOTE = /^ {0,3}> ?(.*)$/;
const TABLE_SEPARATOR = /^ *\|? *:?-+:? *(?:\| *:?-+:? *)*\|? *$/;
const PUNCTUATION = /^[!"#$%&'()*+,\-./:;<=>?@[\\\]^_`{|}~]$/;

/** The Markdown `source` as a DocumentFragment of safe nodes. */
export function renderMarkdown(source) {
  const fragment = document.createDocumentFragment();
  renderBlocks(expandTabs(String(source).replace(/\r\n?/g, "\n")).split("\n"), fragment);
  return fragment;
}

function expandTabs(text) {
  return text.replace(/^\t+/gm, (tabs) => "    ".repeat(tabs.length));
}

function element(tag, className) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  return node;
}

function isBlank(line) {
  return line.trim() === "";
}

function indentOf(line) {
  return line.length - line.trimStart().length;
}

/** True when `line` starts a block that ends a paragraph. */
function interrupts(line) {
  return FENCE.test(line) || HEADING.test(line) || RULE.test(line) || QUOTE.test(line) || LIST_ITEM.test(line);
}

function renderBlocks(lines, parent) {
  let i = 0;
  while (i < lines.length) {
    const line = lines[i];
    if (isBlank(line)) {
      i += 1;
      continue;
    }
    let match;
    if ((match = FENCE.exec(line)) && !(match[2][0] === "`" && match[3].includes("`"))) {
      i = renderFence(lines, i, match, parent);
    } else if ((match = HEADING.exec(line))) {
      const heading = element("h" + match[1].length);
      renderInline(match[2] || "", heading);
      parent.appendChild(heading);
      i += 1;
    } else if (RULE.test(line)) {
      parent.appendChild(element("hr"));
      i += 1;
    } else if (QUOTE.test(line)) {
      const quoted = [];
      while (i < lines.length && (match = QUOTE.exec(lines[i]))) {
        quoted.push(match[1]);
        i += 1;
      }
      const quote = element("blockquote");
      renderBlocks(quoted, quote);
      parent.appendChild(quote);
    } else if (LIST_ITEM.test(line)) {
      i = renderList(lines, i, parent);
    } else if (line.includes("|") && i + 1 < lines.length && TABLE_SEPARATOR.test(lines[i + 1]) && lines[i + 1].includes("-")) {
      i = renderTable(lines, i, parent);
    } else {
      const text = [line.trim()];
      i += 1;
      while (i < lines.length && !isBlank(lines[i]) && !interrupts(lines[i])) {
        text.push(lines[i].trim());
        i += 1;
      }
      const paragraph = element("p");
      renderInline(text.join("\n"), paragraph);
      parent.appendChild(paragraph);
    }
  }
}

/** A fenced code block from `lines[start]`; an unclosed fence (a reply still streaming) runs to the end. */
function renderFence(lines, start, match, parent) {
  const indent = match[1].length;
  const fence = match[2];
  const language = match[3].trim().split(/\s+/)[0].toLowerCase().replace(/[^a-z0-9_+#.-]/g, "").slice(0, 32);
  const body = [];
  let i = start + 1;
  while (i < lines.length) {
    const closing = lines[i].trim();
    if (closing.startsWith(fence) && closing.replace(new RegExp("^\\" + fence[0] + "+"), "") === "" && indentOf(lines[i]) < 4) {
      i += 1;
      break;
    }
    body.push(lines[i].slice(Math.min(indent, indentOf(lines[i]))));
    i += 1;
  }
  parent.appendChild(codeBlock(body.join("\n"), language));
  return i;
}

function codeBlock(text, language) {
  const block = element("div", "code-block");
  const bar = element("div", "code-bar");
  const label = element("span", "code-language");
  label.textContent = language || "code";
  const copy = element("button", "copy");
  copy.type = "button";
  copy.textContent = "Copy";
  copy.addEventListener("click", () => {
    if (!navigator.clipboard) return;
    navigator.clipboard.writeText(text).then(
      () => { copy.textContent = "Copied"; setTimeout(() => { copy.textContent = "Copy"; }, 1500); },
      () => { copy.textContent = "Copy failed"; },
    );
  });
  bar.append(label, copy);
  const pre = element("pre");
  const code = element("code");
  if (language) code.dataset.language = language;
  code.textContent = text;
  pre.appendChild(code);
  block.append(bar, pre);
  return block;
}

/** A list from `lines[start]`, its items' lines rendered as blocks of their own (so lists nest). */
function renderList(lines, start, parent) {
  const first = LIST_ITEM.exec(lines[start]);
  const base = first[1].length;
  const ordered = /\d/.test(first[2]);
  const list = element(ordered ? "ol" : "ul");
  if (ordered) {
    const number = parseInt(first[2], 10);
    if (number !== 1) list.start = number;
  }
  let i = start;
  while (i < lines.length) {
    const match = LIST_ITEM.exec(lines[i]);
    if (!match || match[1].length !== base || /\d/.test(match[2]) !== ordered) break;
    const contentIndent = base + match[2].length + Math.min(Math.max(match[3].length, 1), 4);
    const item = [match[4]];
    let inFence = FENCE.test(match[4]);
    i += 1;
    while (i < lines.length) {
      const line = lines[i];
      if (inFence) {
        item.push(line.slice(Math.min(contentIndent, indentOf(line))));
        if (FENCE.test(line.trim())) inFence = false;
        i += 1;
        continue;
      }
      if (isBlank(line)) {
        // A blank line belongs to the item only if the item goes on after it.
        let next = i + 1;
        while (next < lines.length && isBlank(lines[next])) next += 1;
        if (next < lines.length && indentOf(lines[next]) > base) {
          for (; i < next; i += 1) item.push("");
          continue;
        }
        break;
      }
      const indent = indentOf(line);
      if (indent > base) {
        const inner = line.slice(Math.min(contentIndent, indent));
        if (FENCE.test(inner)) inFence = true;
        item.push(inner);
      } else if (!interrupts(line) && !isBlank(lines[i - 1])) {
        item.push(line.trim()); // a lazy continuation of the item's paragraph
      } else {
        break;
      }
      i += 1;
    }
    const li = element("li");
    renderBlocks(item, li);
    // A tight item is its paragraph's text, not a paragraph.
    if (li.childNodes.length >= 1 && li.firstChild.nodeName === "P" && !item.some(isBlank)) {
      const paragraph = li.firstChild;
      while (paragraph.firstChild) li.insertBefore(paragraph.firstChild, paragraph);
      paragraph.remove();
    }
    list.appendChild(li);
    // A blank line between items of the same list keeps the list going.
    let next = i;
    while (next < lines.length && isBlank(lines[next])) next += 1;
    const following = next < lines.length ? LIST_ITEM.exec(lines[next]) : null;
    if (following && following[1].length === base && /\d/.test(following[2]) === ordered) i = next;
  }
  parent.appendChild(list);
  return i;
}

function splitRow(line) {
  let row = line.trim();
  if (row.startsWith("|")) row = row.slice(1);
  if (row.endsWith("|") && !row.endsWith("\\|")) row = row.slice(0, -1);
  return row.split(/(?<!\\)\|/).map((cell) => cell.trim().replace(/\\\|/g, "|"));
}

function renderTable(lines, start, parent) {
  const header = splitRow(lines[start]);
  const alignments = splitRow(lines[start + 1]).map((cell) =>
    cell.startsWith(":") && cell.endsWith(":") ? "center" : cell.endsWith(":") ? "right" : "");
  const table = element("table");
  const head = element("thead");
  const headRow = element("tr");
  header.forEach((cell, n) => headRow.appendChild(tableCell("th", cell, alignments[n])));
  head.appendChild(headRow);
  table.appendChild(head);
  const body = element("tbody");
  let i = start + 2;
  while (i < lines.length && !isBlank(lines[i]) && lines[i].includes("|")) {
    const cells = splitRow(lines[i]);
    const row = element("tr");
    header.forEach((_, n) => row.appendChild(tableCell("td", cells[n] || "", alignments[n])));
    body.appendChild(row);
    i += 1;
  }
  table.appendChild(body);
  const wrapper = element("div", "table-wrapper");
  wrapper.appendChild(table);
  parent.appendChild(wrapper);
  return i;
}

function tableCell(tag, text, alignment) {
  const cell = element(tag, alignment ? "align-" + alignment : "");
  renderInline(text, cell);
  return cell;
}

/** An http(s) URL as an absolute string, or null for anything else (javascript:, data:, relative…). */
export function safeUrl(text) {
  let url;
  try {
    url = new URL(text.trim());
  } catch {
    return null;
  }
  return url.protocol === "http:" || url.protocol === "https:" ? url.href : null;
}

function link(href, parent) {
  const a = element("a");
  a.href = href;
  a.target = "_blank";
  a.rel = "noopener noreferrer nofollow";
  a.referrerPolicy = "no-referrer";
  parent.appendChild(a);
  return a;
}

/** The index of the `]` closing the `[` at `open`, or -1. */
function closingBracket(text, open) {
  let depth = 0;
  for (let i = open; i < text.length; i += 1) {
    const c = text[i];
    if (c === "\\") i += 1;
    else if (c === "[") depth += 1;
    else if (c === "]" && --depth === 0) return i;
  }
  return -1;
}

/** The index of the `)` closing the `(` at `open` (parentheses balanced), or -1. */
function closingParen(text, open) {
  let depth = 0;
  for (let i = open; i < text.length; i += 1) {
    const c = text[i];
    if (c === "\\") i += 1;
    else if (c === "(") depth += 1;
    else if (c === ")" && --depth === 0) return i;
    else if (c === "\n") return -1;
  }
  return -1;
}

function isWordChar(c) {
  return c !== undefined && /[\p{L}\p{N}]/u.test(c);
}

/** The index where the emphasis opened at `from` with `marker` closes, or -1. */
function closingMarker(text, from, marker) {
  let i = from;
  while ((i = text.indexOf(marker, i)) !== -1) {
    const before = text[i - 1];
    const after = text[i + marker.length];
    const flanking = before !== undefined && !/\s/.test(before);
    const single = marker.length === 1 && (after === marker || before === marker);
    const intraword = marker[0] === "_" && isWordChar(after);
    if (i > from && flanking && !single && !intraword) return i;
    i += marker.length;
  }
  return -1;
}

/** Renders inline Markdown in `text` into `parent`. */
function renderInline(text, parent) {
  let buffer = "";
  const flush = () => {
    if (buffer) parent.appendChild(document.createTextNode(buffer));
    buffer = "";
  };
  let i = 0;
  while (i < text.length) {
    const c = text[i];
    const rest = text.slice(i);
    let match;
    let end;
    if (c === "\\" && i + 1 < text.length && PUNCTUATION.test(text[i + 1])) {
      buffer += text[i + 1];
      i += 2;
    } else if (c === "\n") {
      flush();
      parent.appendChild(element("br"));
      i += 1;
    } else if (c === "`") {
      const run = /^`+/.exec(rest)[0];
      const end = text.indexOf(run, i + run.length);
      if (end === -1) {
        buffer += run;
        i += run.length;
      } else {
        flush();
        let content = text.slice(i + run.length, end).replace(/\n/g, " ");
        if (content.length > 2 && content.startsWith(" ") && content.endsWith(" ")) content = content.slice(1, -1);
        const code = element("code");
        code.textContent = content;
        parent.appendChild(code);
        i = end + run.length;
      }
    } else if ((c === "[" || (c === "!" && text[i + 1] === "[")) && (match = linkAt(text, c === "!" ? i + 1 : i))) {
      flush();
      const href = safeUrl(match.destination);
      if (href) {
        // An image is never loaded: it is shown as a link to where it would have come from.
        const a = link(href, parent);
        if (c === "!") a.textContent = "image: " + (match.label || href);
        else renderInline(match.label || href, a);
      } else {
        // Not an http(s) link (javascript:, data:, a relative path…): shown as typed.
        parent.appendChild(document.createTextNode(text.slice(i, match.end)));
      }
      i = match.end;
    } else if (c === "<" && (match = /^<(https?:\/\/[^\s<>]+)>/i.exec(rest)) && safeUrl(match[1])) {
      flush();
      link(safeUrl(match[1]), parent).textContent = match[1];
      i += match[0].length;
    } else if ((c === "h" || c === "H") && !isWordChar(text[i - 1]) && (match = /^https?:\/\/[^\s<>]+/i.exec(rest))) {
      let url = match[0].replace(/[.,;:!?'"*_~]+$/, "");
      // A closing parenthesis belongs to the URL only if it opened one.
      while (url.endsWith(")") && (url.match(/\(/g) || []).length < (url.match(/\)/g) || []).length) url = url.slice(0, -1);
      const href = safeUrl(url);
      if (href) {
        flush();
        link(href, parent).textContent = url;
      } else {
        buffer += url;
      }
      i += url.length;
    } else if ((match = /^(\*\*|__|~~|\*|_)/.exec(rest)) && (end = emphasis(text, i, match[1], parent, flush)) > 0) {
      i = end;
    } else {
      buffer += c;
      i += 1;
    }
  }
  flush();
}

/** A `[label](destination)` starting at `open`: its parts and where it ends, or null. */
function linkAt(text, open) {
  const close = closingBracket(text, open);
  if (close === -1 || text[close + 1] !== "(") return null;
  const end = closingParen(text, close + 1);
  if (end === -1) return null;
  let destination = text.slice(close + 2, end).trim();
  if (destination.startsWith("<") && destination.includes(">")) destination = destination.slice(1, destination.indexOf(">"));
  else destination = destination.split(/\s+/)[0] || "";
  return { label: text.slice(open + 1, close), destination, end: end + 1 };
}

/** Renders emphasis opened by `marker` at `i` if it closes; returns where it ends, or -1. */
function emphasis(text, i, marker, parent, flush) {
  const after = text[i + marker.length];
  if (after === undefined || /\s/.test(after)) return -1;
  if (marker[0] === "_" && isWordChar(text[i - 1])) return -1; // snake_case stays as typed
  const close = closingMarker(text, i + marker.length, marker);
  if (close === -1) return -1;
  flush();
  const tag = marker === "~~" ? "del" : marker.length === 2 ? "strong" : "em";
  const node = element(tag);
  renderInline(text.slice(i + marker.length, close), node);
  parent.appendChild(node);
  return close + marker.length;
}
