/* lanmirror dashboard: polls /api/status and rewrites the figures in place (no reload).
   The page's HTML says where each figure comes from (see src/dashboard/mod.rs):
   data-k/data-f/data-null, data-msg/data-args, data-msgk/data-pre/data-suf, data-list/
   data-none (+<template>), data-show/data-hide, data-chart. The formats mirror
   src/dashboard/format.rs rule for rule; the browser test checks they print the same. */
(function () {
  'use strict';
  var M = JSON.parse(document.getElementById('i18n').textContent);
  var DEVA = M['meta.digits'] === 'deva';
  var INDIAN = M['meta.grouping'] === 'indian';
  var UNITS = ['KiB', 'MiB', 'GiB', 'TiB', 'PiB'];

  function t(k) { return Object.prototype.hasOwnProperty.call(M, k) ? M[k] : k; }
  function fill(p, a) {
    return p.replace(/\{([A-Za-z0-9_]+)\}/g, function (m, n) {
      return Object.prototype.hasOwnProperty.call(a, n) ? a[n] : m;
    });
  }
  function pat(k, a) { return fill(t(k), a); }
  function digits(s) {
    return DEVA ? s.replace(/[0-9]/g, function (d) { return String.fromCharCode(0x966 + (+d)); }) : s;
  }
  function group(s) {
    if (s.length <= 3) return s;
    var sep = t('meta.group_sep'), last = s.slice(-3), rest = s.slice(0, -3);
    var n = INDIAN ? 2 : 3, parts = [];
    while (rest.length > n) { parts.unshift(rest.slice(-n)); rest = rest.slice(0, -n); }
    parts.unshift(rest);
    return parts.join(sep) + sep + last;
  }
  function int(n) { return digits(group(String(Math.floor(n)))); }
  function dec1(tenths) { return int(Math.floor(tenths / 10)) + t('meta.decimal') + digits(String(tenths % 10)); }
  function bytes(v) {
    if (v < 1024) return pat('units.size', { n: int(v), unit: t('units.B') });
    var k = 0, div = 1024;
    while (v >= div * 1024 && k < UNITS.length - 1) { div *= 1024; k++; }
    var tenths = Math.floor((v * 10 + div / 2) / div);
    var n = tenths < 1000 ? dec1(tenths) : int(Math.floor((v + div / 2) / div));
    return pat('units.size', { n: n, unit: t('units.' + UNITS[k]) });
  }
  function rate(v) { return pat('units.per_sec', { v: bytes(v) }); }
  function pct(v) { return pat('units.pct', { n: int(v) }); }
  function dur(s) {
    s = Math.floor(s);
    if (s < 60) return pat('units.secs', { n: int(s) });
    if (s < 3600) return pat('units.mins', { n: int(Math.floor(s / 60)) });
    if (s < 86400) return pat('units.hours', { n: int(Math.floor(s / 3600)) });
    var d = Math.floor(s / 86400);
    return pat(d === 1 ? 'units.day' : 'units.days', { n: int(d) });
  }
  function ago(s) { return s < 5 ? t('units.just_now') : pat('units.ago', { dur: dur(s) }); }
  function ymd(s) {
    var m = /^(\d{4})-(\d{2})-(\d{2})/.exec(s);
    if (!m) return null;
    var mo = +m[2], d = +m[3];
    return mo >= 1 && mo <= 12 && d >= 1 && d <= 31 ? [m[1], mo, d] : null;
  }
  function date(s) {
    var x = ymd(s);
    return x ? pat('date.long', { d: digits(String(x[2])), month: t('month.' + x[1]), y: digits(x[0]) }) : s;
  }
  function dateShort(s) {
    var x = ymd(s);
    return x ? pat('date.short', { d: digits(String(x[2])), mon: t('month_short.' + x[1]) }) : s;
  }
  function month(s) {
    var x = ymd(s + '-01');
    return x ? pat('date.month', { month: t('month.' + x[1]), y: digits(x[0]) }) : s;
  }
  function raw(v) {
    if (typeof v === 'number') return String(v);
    if (typeof v === 'string') return v;
    if (typeof v === 'boolean') return v ? 'true' : 'false';
    return '';
  }
  function isNum(v) { return typeof v === 'number' && v >= 0 && Math.floor(v) === v; }
  /* A value by format name; null for null, missing or mistyped values (as Fmt::value). */
  function fmt(v, f) {
    if (v === null || v === undefined) return null;
    var num = { int: int, bytes: bytes, rate: rate, pct: pct, dur: dur, ago: ago }[f];
    if (num) return isNum(v) ? num(v) : null;
    var str = { date: date, dateshort: dateShort, month: month }[f];
    if (str) return typeof v === 'string' ? str(v) : null;
    if (f === 'join') return Array.isArray(v) && v.length ? v.map(raw).join(', ') : null;
    if (f === 'evr') {
      if (typeof v === 'object' && !Array.isArray(v)) {
        var vr = (v.version || '') + '-' + (v.release || '');
        return v.epoch > 0 ? v.epoch + ':' + vr : vr;
      }
      return raw(v);
    }
    if (f === 'short') { var s = raw(v), c = Array.from(s); return c.length > 12 ? c.slice(0, 12).join('') + '\u2026' : s; }
    if (f.indexOf('enum:') === 0) return t(f.slice(5) + '.' + raw(v));
    return raw(v);
  }
  function arg(name, v) {
    var f = 'text';
    if (typeof v === 'number') {
      f = /_bytes$/.test(name) ? 'bytes' : /_rate$/.test(name) ? 'rate' : /_secs$/.test(name) ? 'dur'
        : /_pct$/.test(name) ? 'pct' : 'int';
    } else if (/_date$/.test(name)) f = 'date';
    var s = fmt(v, f);
    return s === null ? t('units.none') : s;
  }
  function message(key, args) {
    var a = {};
    Object.keys(args).forEach(function (n) { a[n] = arg(n, args[n]); });
    return pat(key, a);
  }
  function get(o, path) {
    if (path === '.' || path === '') return o;
    var parts = path.split('.');
    for (var i = 0; i < parts.length; i++) {
      if (o === null || typeof o !== 'object') return undefined;
      o = o[parts[i]];
    }
    return o;
  }
  function isSet(v) { return !(v === undefined || v === null || v === false || v === ''); }

  /* Fills the elements of one scope (the page, or a list row) from `obj`. */
  function fillScope(root, obj) {
    var els = root.querySelectorAll('[data-k],[data-msg],[data-msgk],[data-list],[data-show],[data-hide]');
    for (var i = 0; i < els.length; i++) {
      var el = els[i];
      var owner = el.parentElement && el.parentElement.closest('[data-scope]');
      if (owner !== root) continue;
      if (el.closest('template')) continue;
      var d = el.dataset;
      if (d.show !== undefined) el.hidden = !isSet(get(obj, d.show));
      if (d.hide !== undefined) el.hidden = isSet(get(obj, d.hide));
      if (d.list !== undefined) { fillList(el, get(obj, d.list)); continue; }
      if (d.k !== undefined) {
        var v = get(obj, d.k);
        el.setAttribute('data-v', raw(v));
        if (el.tagName === 'PROGRESS') {
          var max = get(obj, d.max);
          if (isNum(max) && max > 0) { el.max = max; el.value = Math.min(isNum(v) ? v : 0, max); }
          else { el.max = 1; el.value = 0; }
          continue;
        }
        var s = fmt(v, d.f || 'text');
        if (s === null) s = d.null ? t(d.null) : '';
        if (el.textContent !== s) el.textContent = s;
      } else if (d.msg !== undefined) {
        var args = {};
        (d.args || '').split(',').forEach(function (p) {
          if (!p) return;
          var j = p.indexOf(':');
          var val = get(obj, p.slice(j + 1));
          args[p.slice(0, j)] = val === undefined ? null : val;
        });
        var m = message(d.msg, args);
        if (el.textContent !== m) el.textContent = m;
      } else if (d.msgk !== undefined) {
        var key = (d.pre || '') + raw(get(obj, d.msgk)) + (d.suf || '');
        var mk = message(key, obj && typeof obj === 'object' ? obj : {});
        if (el.textContent !== mk) el.textContent = mk;
      }
    }
  }
  /* One row per item from the list's <template>, or the "none" message. */
  function fillList(el, items) {
    var tpl = el.querySelector(':scope > template');
    if (!tpl) return;
    items = Array.isArray(items) ? items : [];
    var rows = [];
    for (var c = el.firstElementChild; c; c = c.nextElementSibling) if (c !== tpl) rows.push(c);
    rows.forEach(function (r) { el.removeChild(r); });
    if (!items.length) {
      if (el.dataset.none) {
        var p = document.createElement('p');
        p.className = 'none';
        p.textContent = t(el.dataset.none);
        el.appendChild(p);
      }
      return;
    }
    items.forEach(function (it) {
      var row = tpl.content.firstElementChild.cloneNode(true);
      el.appendChild(row);
      fillScope(row, it);
    });
  }
  /* The 30-day chart: bar heights against the largest day. */
  function chart(st) {
    var svg = document.querySelector('[data-chart]');
    if (!svg) return;
    var days = get(st, svg.dataset.chart) || [];
    var max = Math.max(1, get(st, svg.dataset.max) || 0);
    var h = 150;
    svg.querySelectorAll('rect[data-i]').forEach(function (r) {
      var d = days[+r.dataset.i] || {};
      var v = isNum(d[r.dataset.s]) ? d[r.dataset.s] : 0;
      var height = Math.round(v / max * h);
      r.setAttribute('height', height.toFixed(1));
      r.setAttribute('y', (h - height).toFixed(1));
    });
  }
  function clock() {
    var n = new Date();
    function two(x) { return (x < 10 ? '0' : '') + x; }
    return digits(two(n.getHours()) + ':' + two(n.getMinutes()) + ':' + two(n.getSeconds()));
  }

  /* For tests and scripts that want the page's own formatting. */
  window.lanmirrorFormat = fmt;
  window.lanmirrorMessage = message;
  /* Shows a given status document and stops following the node's (for tests and demos). */
  var paused = false;
  window.lanmirrorRender = function (st) { paused = true; fillScope(document.body, st); chart(st); };

  var every = +document.documentElement.dataset.poll || 3000;
  var live = document.getElementById('livenote');
  var down = document.getElementById('unreachable');
  var updated = document.getElementById('updated');
  var polls = 0;
  if (live) live.hidden = false;
  function poll() {
    /* A tab nobody looks at does not make the node count its store every few seconds. */
    if (document.hidden) { setTimeout(poll, every); return; }
    var x = new XMLHttpRequest();
    x.open('GET', '/api/status', true);
    x.timeout = Math.max(2000, every - 200);
    x.onload = function () {
      if (x.status !== 200) { failed(); return; }
      var st;
      try { st = JSON.parse(x.responseText); } catch (e) { failed(); return; }
      if (paused) return;
      fillScope(document.body, st);
      chart(st);
      polls++;
      document.documentElement.setAttribute('data-polls', String(polls));
      if (down) down.hidden = true;
      if (updated) updated.textContent = pat('page.updated', { time: clock() });
      setTimeout(poll, every);
    };
    x.onerror = x.ontimeout = failed;
    x.send();
  }
  function failed() {
    if (down) down.hidden = false;
    setTimeout(poll, every);
  }
  setTimeout(poll, every);
})();
