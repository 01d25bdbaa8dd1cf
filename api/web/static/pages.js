/* The pages' only script, first-party and optional: every page works without it.
 *
 * - forms carrying `input[data-time-zone]` send the browser's IANA time zone, so the
 *   emails give times in the person's own;
 * - the inbox page's "send again" waits out the resend cooldown, saying how long;
 * - the new-password form marks, as the person types, the rules a browser can check
 *   (length, letter, digit, special character, the two fields alike); the others stay
 *   "checked when you submit": the server's verdict is the truth;
 * - a show/hide toggle for both password fields;
 * - "suggest a password I can remember": random words from the page language's list
 *   (static/words/<lang>.txt) and one digit, drawn with crypto.getRandomValues, so the
 *   server never sends a password; shown once, with its entropy.
 */
(function () {
  "use strict";

  function timeZone() {
    try {
      return Intl.DateTimeFormat().resolvedOptions().timeZone || "";
    } catch (e) {
      return "";
    }
  }

  document.querySelectorAll("input[data-time-zone]").forEach(function (field) {
    field.value = timeZone();
  });

  /* -- "send again", once the cooldown has passed ------------------------------------ */

  var again = document.getElementById("send-again");
  if (again && Number(again.dataset.wait) > 0) {
    var note = document.getElementById("send-again-wait");
    var left = Number(again.dataset.wait);
    var say = function () {
      if (note) note.textContent = again.dataset.waitText.replace("{seconds}", String(left));
    };
    again.disabled = true;
    say();
    var timer = window.setInterval(function () {
      left -= 1;
      if (left <= 0) {
        window.clearInterval(timer);
        again.disabled = false;
        if (note) note.textContent = "";
        return;
      }
      say();
    }, 1000);
  }

  /* -- the new-password form --------------------------------------------------------- */

  var form = document.getElementById("reset-form");
  if (!form) return;
  var password = document.getElementById("password");
  var confirmation = document.getElementById("password_confirm");
  var rules = document.getElementById("password-rules");
  var toggle = document.getElementById("show-password");
  var box = document.getElementById("suggestion-box");
  var shown = document.getElementById("suggestion");

  var LIVE = {
    length: function (value) {
      var count = Array.from(value.normalize("NFKC")).length;
      return count >= Number(rules.dataset.min) && count <= Number(rules.dataset.max);
    },
    letter: function (value) {
      return /\p{L}/u.test(value.normalize("NFKC"));
    },
    digit: function (value) {
      return /\p{Nd}/u.test(value.normalize("NFKC"));
    },
    special: function (value) {
      return /[\p{P}\p{S}\p{Z}]/u.test(value.normalize("NFKC"));
    },
    match: function (value, again) {
      return again !== "" && value.normalize("NFKC") === again.normalize("NFKC");
    },
  };

  function mark(item, status) {
    item.classList.remove("pass", "fail", "unknown");
    item.classList.add(status);
    var words = item.querySelector(".status");
    var key = "status" + status.charAt(0).toUpperCase() + status.slice(1);
    if (words) words.textContent = "(" + rules.dataset[key] + ")";
  }

  var typed = false;
  function check() {
    var value = password.value;
    var again = confirmation.value;
    rules.querySelectorAll("li[data-rule]").forEach(function (item) {
      var live = LIVE[item.dataset.live];
      if (live) {
        // Nothing typed yet: a rule is not "not met", only not met yet.
        mark(item, value === "" ? "unknown" : live(value, again) ? "pass" : "fail");
      } else if (typed) {
        mark(item, "unknown"); // the server judges these when the form is sent
      }
    });
  }

  password.addEventListener("input", function () {
    typed = true;
    var out = document.getElementById("suggested-password");
    if (shown && !shown.hidden && out && password.value !== out.textContent) {
      shown.hidden = true; // the suggestion is no longer what the field holds: shown once
      out.textContent = "";
    }
    check();
  });
  confirmation.addEventListener("input", function () {
    typed = true;
    check();
  });
  if (password.value !== "") check();

  function reveal(visible) {
    [password, confirmation].forEach(function (field) {
      field.type = visible ? "text" : "password";
    });
    if (toggle) {
      toggle.setAttribute("aria-pressed", visible ? "true" : "false");
      toggle.textContent = visible ? toggle.dataset.hide : toggle.dataset.show;
    }
  }

  if (toggle) {
    toggle.hidden = false;
    toggle.addEventListener("click", function () {
      reveal(password.type === "password");
    });
  }

  /* -- "suggest a password I can remember" -------------------------------------------- */

  if (!box || !window.crypto || !window.crypto.getRandomValues || !window.fetch) return;

  // An unbiased draw in [0, n): values past the last whole multiple of n are drawn again.
  function randomBelow(n) {
    var limit = Math.floor(0x100000000 / n) * n;
    var draw = new Uint32Array(1);
    do {
      window.crypto.getRandomValues(draw);
    } while (draw[0] >= limit);
    return draw[0] % n;
  }

  var words = null;
  function loadWords() {
    if (words) return Promise.resolve(words);
    return fetch(box.dataset.words, { credentials: "omit" })
      .then(function (answer) {
        if (!answer.ok) throw new Error("word list " + answer.status);
        return answer.text();
      })
      .then(function (text) {
        var avoid = {};
        (box.dataset.avoid || "").split(" ").forEach(function (n) {
          if (n !== "") avoid[n] = true;
        });
        var all = text.split("\n").filter(function (line) {
          return line.trim() !== "" && line.charAt(0) !== "#";
        });
        // Words holding the account's name or address are left out (the policy refuses them).
        words = all
          .map(function (word) {
            return word.trim();
          })
          .filter(function (word, n) {
            return !avoid[n];
          });
        return words;
      });
  }

  function suggest(list) {
    var count = Number(box.dataset.wordCount);
    var parts = [];
    for (var i = 0; i < count; i += 1) parts.push(list[randomBelow(list.length)]);
    // One digit, as its own word, at any of the count + 1 places.
    parts.splice(randomBelow(count + 1), 0, String(randomBelow(10)));
    var bits = count * Math.log2(list.length) + Math.log2(10) + Math.log2(count + 1);
    return { text: parts.join(" "), bits: Math.floor(bits) };
  }

  var button = document.getElementById("suggest-password");
  box.hidden = false;
  button.addEventListener("click", function () {
    button.disabled = true;
    loadWords()
      .then(function (list) {
        var made = suggest(list);
        password.value = made.text;
        confirmation.value = made.text;
        reveal(true);
        typed = true;
        var out = document.getElementById("suggested-password");
        out.textContent = made.text;
        var entropy = document.getElementById("suggestion-entropy");
        entropy.textContent = entropy.dataset.text.replace("{bits}", String(made.bits));
        shown.hidden = false;
        check();
      })
      .catch(function () {
        box.hidden = true; // no list, no suggestion: the form still works
      })
      .then(function () {
        button.disabled = false;
      });
  });
})();
