// The collection page's checks as the person types, and a submit that keeps
// the form: the same rules as the server (mnvault_core::number), which
// decides. No number is ever written into the page or sent anywhere else.
'use strict';

(function () {
  var form = document.getElementById('collect-form');
  if (!form) {
    return;
  }
  var formMessage = document.getElementById('form-message');
  var inputs = Array.prototype.slice.call(form.querySelectorAll('input[name^="n"]'));
  var WEIGHTS = [6, 5, 4, 3, 2, 7, 6, 5, 4, 3, 2];
  // The separators the server accepts: - U+FF0D U+2010 U+2212, space, U+3000.
  var SEPARATORS = '-\uff0d\u2010\u2212 \u3000';

  function text(name, n) {
    var message = form.getAttribute('data-msg-' + name) || '';
    return n === undefined ? message : message.replace('{n}', String(n));
  }

  // Returns {digits: '123...'} or {bad: position} (1-based).
  function normalise(value) {
    var digits = '';
    var position = 0;
    for (var i = 0; i < value.length; i++) {
      var code = value.charCodeAt(i);
      var ch = value.charAt(i);
      // Count code points as the server does (surrogate pairs are one).
      if (code >= 0xdc00 && code <= 0xdfff && i > 0) {
        continue;
      }
      position += 1;
      if (SEPARATORS.indexOf(ch) >= 0) {
        continue;
      }
      if (code >= 0x30 && code <= 0x39) {
        digits += ch;
      } else if (code >= 0xff10 && code <= 0xff19) {
        digits += String.fromCharCode(code - 0xff10 + 0x30);
      } else {
        return { bad: position };
      }
    }
    return { digits: digits };
  }

  function checkDigitMatches(digits) {
    var sum = 0;
    for (var i = 0; i < 11; i++) {
      sum += Number(digits.charAt(i)) * WEIGHTS[i];
    }
    var r = sum % 11;
    var check = r <= 1 ? 0 : 11 - r;
    return Number(digits.charAt(11)) === check;
  }

  // The message for a value, or '' when it is a valid number. While typing
  // (final false), a short number is not an error yet.
  function problem(value, final) {
    var read = normalise(value);
    if (read.bad !== undefined) {
      return text('char', read.bad);
    }
    var count = read.digits.length;
    if (count === 0) {
      return final ? text('empty') : null;
    }
    if (count < 12) {
      return final ? text('length', count) : null;
    }
    if (count > 12) {
      return text('length', count);
    }
    return checkDigitMatches(read.digits) ? '' : text('check');
  }

  function show(input, message) {
    var target = document.getElementById(input.id + '-msg');
    if (message === null) {
      // Still typing: keep an earlier error until it is settled.
      if (input.getAttribute('aria-invalid') !== 'true') {
        target.textContent = '';
        target.className = 'msg';
      }
      return;
    }
    input.setAttribute('aria-invalid', message ? 'true' : 'false');
    target.textContent = message || text('ok');
    target.className = message ? 'msg error' : 'msg ok';
  }

  function validate(input, final) {
    var message = problem(input.value, final);
    show(input, message);
    return message === '';
  }

  inputs.forEach(function (input) {
    input.addEventListener('input', function () {
      validate(input, false);
    });
    input.addEventListener('blur', function () {
      if (input.value !== '' || input.getAttribute('aria-invalid') === 'true') {
        validate(input, true);
      }
    });
  });

  var sending = false;
  form.addEventListener('submit', function (event) {
    event.preventDefault();
    if (sending) {
      return;
    }
    var firstWrong = null;
    inputs.forEach(function (input) {
      if (!validate(input, true) && firstWrong === null) {
        firstWrong = input;
      }
    });
    if (firstWrong !== null) {
      formMessage.textContent = text('fix');
      firstWrong.focus();
      return;
    }
    sending = true;
    formMessage.textContent = text('sending');
    var body = new URLSearchParams(new FormData(form));
    fetch(form.action, {
      method: 'POST',
      credentials: 'same-origin',
      headers: {
        'Accept': 'application/json',
        'Content-Type': 'application/x-www-form-urlencoded'
      },
      body: body.toString()
    })
      .then(function (response) {
        return response.json();
      })
      .then(function (answer) {
        sending = false;
        if (answer.ok && typeof answer.next === 'string' && answer.next.charAt(0) === '/') {
          window.location.assign(answer.next);
          return;
        }
        formMessage.textContent = answer.message || text('network');
        var first = null;
        (answer.fields || []).forEach(function (field) {
          var input = document.getElementById(field.field);
          if (input && inputs.indexOf(input) >= 0) {
            show(input, field.message);
            if (first === null) {
              first = input;
            }
          }
        });
        if (first !== null) {
          first.focus();
        }
      })
      .catch(function () {
        sending = false;
        formMessage.textContent = text('network');
      });
  });
})();
