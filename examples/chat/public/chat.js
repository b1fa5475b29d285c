// The chat page. Uses the browser client exactly as an application would:
// MessageBus.subscribe / unsubscribe (with a "/chat/*" pattern) / status / stop.
(function () {
  "use strict";

  var MB = window.MessageBus;
  var state = { user: null, room: null, to: null, rooms: [], users: [] };

  function $(id) {
    return document.getElementById(id);
  }

  function el(tag, className, text) {
    var node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text; // never innerHTML: names and texts are user input
    return node;
  }

  function api(method, url, params) {
    var options = { method: method, credentials: "same-origin", headers: {} };
    if (params) {
      options.headers["Content-Type"] = "application/x-www-form-urlencoded";
      options.body = new URLSearchParams(params).toString();
    }
    return fetch(url, options).then(function (res) {
      return res.json().then(function (body) {
        if (!res.ok) throw new Error(body.error || res.statusText);
        return body;
      });
    });
  }

  function time(iso) {
    var d = new Date(iso);
    return isNaN(d) ? "" : d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  }

  function scrollDown(list) {
    list.scrollTop = list.scrollHeight;
  }

  // ---- rendering ----------------------------------------------------------

  function renderRooms() {
    var list = $("rooms");
    list.textContent = "";
    state.rooms.forEach(function (room) {
      var li = el("li", room === state.room ? "active" : "", "#" + room);
      li.addEventListener("click", function () {
        joinRoom(room);
      });
      list.appendChild(li);
    });
  }

  function renderUsers() {
    var list = $("users");
    list.textContent = "";
    state.users.forEach(function (name) {
      var self = name === state.user;
      var li = el("li", self ? "self" : name === state.to ? "active" : "", name + (self ? " (you)" : ""));
      if (!self) {
        li.addEventListener("click", function () {
          setTarget(state.to === name ? null : name);
        });
      }
      list.appendChild(li);
    });
  }

  function setTarget(name) {
    state.to = name;
    $("target").textContent = name ? "to " + name + " ✕" : "";
    $("text").placeholder = name ? "Private message to " + name + "…" : "Say something…";
    renderUsers();
    $("text").focus();
  }

  function addMessage(data) {
    var li = el("li");
    li.appendChild(el("span", "who", data.user));
    li.appendChild(document.createTextNode(data.text));
    li.appendChild(el("span", "when", time(data.at)));
    $("messages").appendChild(li);
    scrollDown($("messages"));
  }

  function addPrivate(data) {
    var out = data.from === state.user;
    var li = el("li", out ? "out" : "");
    li.appendChild(el("span", "who", out ? "you → " + data.to : data.from + " → you"));
    li.appendChild(document.createTextNode(data.text));
    li.appendChild(el("span", "when", time(data.at)));
    $("private").appendChild(li);
    scrollDown($("private"));
  }

  // ---- channels -----------------------------------------------------------

  // History comes from the app (MessageBus.backlog on the server), then the
  // subscription starts right after the last message shown, so nothing
  // published in between is lost or shown twice.
  function joinRoom(room) {
    if (state.rooms.indexOf(room) < 0) state.rooms.push(room);
    MB.unsubscribe("/chat/*");
    state.room = room;
    location.hash = room;
    renderRooms();
    $("room-title").textContent = "#" + room;
    $("messages").textContent = "";
    api("GET", "/history?room=" + encodeURIComponent(room)).then(function (h) {
      if (state.room !== room) return; // switched again meanwhile
      h.messages.forEach(addMessage);
      MB.subscribe(h.channel, addMessage, h.last_id);
    });
  }

  function watchPrivate() {
    api("GET", "/history?room=@private").then(function (h) {
      h.messages.forEach(addPrivate);
      MB.subscribe("/private", addPrivate, h.last_id);
    });
  }

  function watchPresence(users) {
    state.users = users;
    renderUsers();
    MB.subscribe("/presence", function (data) {
      state.users = data.users;
      renderUsers();
    });
  }

  // ---- flow ---------------------------------------------------------------

  function enter(session) {
    state.user = session.user;
    state.rooms = session.rooms.slice();
    $("login").hidden = true;
    $("chat").hidden = false;
    $("logout").hidden = false;
    $("me").textContent = "signed in as " + state.user;
    watchPresence(session.users);
    watchPrivate();
    var wanted = location.hash.replace(/^#/, "");
    joinRoom(/^[a-z0-9_-]{1,32}$/.test(wanted) ? wanted : "general");
    $("text").focus();
  }

  function showStatus() {
    var s;
    try {
      s = MB.status();
    } catch (e) {
      s = "not started";
    }
    $("bus-status").textContent = "bus: " + s + (MB.longPoll ? " · connected" : "");
  }

  $("login-form").addEventListener("submit", function (e) {
    e.preventDefault();
    api("POST", "/login", { name: $("name").value.trim() })
      .then(function () {
        return api("GET", "/session");
      })
      .then(enter)
      .catch(function (err) {
        $("login-error").textContent = err.message;
      });
  });

  $("send-form").addEventListener("submit", function (e) {
    e.preventDefault();
    var text = $("text").value.trim();
    if (!text) return;
    var sent = state.to
      ? api("POST", "/private", { to: state.to, text: text }).then(addPrivate)
      : api("POST", "/message", { room: state.room, text: text });
    sent
      .then(function () {
        $("text").value = "";
      })
      .catch(function (err) {
        alert(err.message);
      });
  });

  $("join-form").addEventListener("submit", function (e) {
    e.preventDefault();
    var room = $("new-room").value.trim().toLowerCase();
    if (!/^[a-z0-9_-]{1,32}$/.test(room)) return;
    $("new-room").value = "";
    joinRoom(room);
  });

  $("target").addEventListener("click", function () {
    setTarget(null);
  });

  $("logout").addEventListener("click", function () {
    MB.stop();
    api("POST", "/logout").then(function () {
      location.hash = "";
      location.reload();
    });
  });

  setInterval(showStatus, 1000);
  showStatus();

  api("GET", "/session").then(function (session) {
    if (session.user) enter(session);
    else $("login").hidden = false;
  });
})();
