// The live inbox: new bulletins in your channels appear without reloading (server-sent events
// from this node, exchange/web/live.py). Without JavaScript the pages work as before. Words come
// from the page (data-text-*) and the event (news, kind_label, created_label), in the reader's language.
// When the session ends (idle timeout, sign-out elsewhere) the stream says "signed-out" and the page
// says so, with a link to sign in; if the node refuses a reconnection the page says new bulletins no
// longer appear. Either way the page never looks live when it is not.
"use strict";
(function () {
  var table = document.querySelector("[data-live-channel]");
  var status = document.getElementById("live-status");
  if (!table || !status || !window.EventSource) { return; }
  var channel = table.getAttribute("data-live-channel");
  var unread = table.getAttribute("data-text-unread") || "Unread";
  var where = table.getAttribute("data-text-where") || " in {channel} from {author}: ";
  var source = new EventSource("/console/events?after=" + encodeURIComponent(table.getAttribute("data-live-after")));

  function cell(tag, text, cls) {
    var el = document.createElement(tag);
    if (cls) { el.className = cls; }
    if (text !== undefined) { el.textContent = text; }
    return el;
  }

  function stopped(text, signIn) {
    source.close();  // no more reconnections: each would be refused the same way
    status.textContent = "";
    status.className = "alert error";
    status.appendChild(cell("strong", text));
    if (signIn) {
      status.appendChild(document.createTextNode(" "));
      var link = cell("a", signIn);
      link.href = "/console/sign-in?next=" + encodeURIComponent(location.pathname);
      status.appendChild(link);
    }
    status.hidden = false;
  }

  source.addEventListener("signed-out", function () {
    stopped(table.getAttribute("data-text-signed-out") || "Your session has ended. Please sign in again.",
            table.getAttribute("data-text-sign-in") || "Sign in");
  });

  source.addEventListener("error", function () {
    // CONNECTING: the browser retries by itself (the node restarting, the network). CLOSED: the node
    // answered a reconnection with something other than a stream (the sign-in page, a refusal).
    if (source.readyState === EventSource.CLOSED) {
      stopped(table.getAttribute("data-text-stopped") || "New bulletins no longer appear here. Reload the page.");
    }
  });

  source.addEventListener("bulletin", function (e) {
    var b = JSON.parse(e.data);
    var href = "/console/bulletins/" + b.id;
    var tlp = "tlp tlp-" + b.tlp.toLowerCase().replace("+", "-");
    status.textContent = "";
    status.className = "alert ok";
    status.appendChild(cell("strong", b.news + " "));
    status.appendChild(cell("span", "TLP:" + b.tlp, tlp));
    status.appendChild(document.createTextNode(where.replace(/\{(channel|author)\}/g, function (_, name) {
      return name === "channel" ? b.channel : b.author_name;  // one pass: a name cannot add a placeholder
    })));
    var link = cell("a", b.title);
    link.href = href;
    link.dir = "auto";
    status.appendChild(link);
    status.hidden = false;
    if (b.channel !== channel) { return; }
    var row = document.createElement("tr");
    row.className = "unread live-new";
    var state = cell("td");
    state.appendChild(cell("span", unread, "badge unread-badge"));
    row.appendChild(state);
    var title = cell("th");
    title.scope = "row";
    var open = cell("a", b.title);
    open.href = href;
    open.dir = "auto";
    title.appendChild(open);
    row.appendChild(title);
    row.appendChild(cell("td", b.kind_label));
    var handling = cell("td");
    handling.appendChild(cell("span", "TLP:" + b.tlp, tlp));
    row.appendChild(handling);
    var from = cell("td");
    from.appendChild(cell("bdi", b.author_name));
    row.appendChild(from);
    var when = cell("td");
    var time = cell("time", b.created_label || b.created);
    time.setAttribute("datetime", b.created);
    when.appendChild(time);
    row.appendChild(when);
    var body = table.querySelector("tbody");
    body.insertBefore(row, body.firstChild);
    table.hidden = false;
    var empty = document.getElementById("inbox-empty");
    if (empty) { empty.hidden = true; }
  });
})();
