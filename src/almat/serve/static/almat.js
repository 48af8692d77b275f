// almat serve: SVG figures drawn from the values the page carries (#chart-data), and live refresh:
// poll the page's stamp; when it moves, fetch the page's live part and swap it in (no reload).
// No third-party code, no network beyond this server.
"use strict";
(function () {
  const NS = "http://www.w3.org/2000/svg";
  const C = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000"];
  const fmt = (v) => (v === null || v === undefined ? "–" : Math.abs(v) >= 1e4 || (v !== 0 && Math.abs(v) < 1e-3)
    ? v.toExponential(2) : +v.toPrecision(4) + "");

  function el(tag, attrs, parent, text) {
    const e = document.createElementNS(NS, tag);
    for (const k in attrs) if (attrs[k] !== undefined && attrs[k] !== null) e.setAttribute(k, attrs[k]);
    if (text !== undefined) e.textContent = text;
    if (parent) parent.appendChild(e);
    return e;
  }
  const finite = (v) => typeof v === "number" && isFinite(v);

  function axis(spec, values, lo, hi) {
    // a scale: value -> pixel between lo and hi, with nice ticks; values that are never negative (errors,
    // counts) get an axis from 0 up (a log axis: from a positive power of ten)
    const vals = values.filter((v) => finite(v) && (!spec.log || v > 0));
    const nonneg = !spec.log && (spec.min !== undefined ? spec.min >= 0 : vals.every((v) => v >= 0));
    let a = spec.min !== undefined ? spec.min : vals.length ? Math.min(...vals) : spec.log ? 0.1 : 0;
    let b = spec.max !== undefined ? spec.max : vals.length ? Math.max(...vals) : 1;
    if (a === b) {
      const d = Math.abs(a) || 1;
      if (spec.min === undefined) a = spec.log ? a / 2 : a - d;
      b = spec.log ? b * 2 : b + d;
    }
    if (nonneg) a = Math.max(a, 0);
    if (spec.log) { a = Math.pow(10, Math.floor(Math.log10(a))); b = Math.pow(10, Math.ceil(Math.log10(b))); }
    else if (spec.min === undefined && a > 0 && a < 0.3 * b) a = 0;
    if (!spec.log && spec.max === undefined) b += (b - a) * 0.06;
    const f = spec.log ? Math.log10 : (v) => v;
    const fa = f(a), fb = f(b);
    const px = (v) => lo + ((f(v) - fa) / (fb - fa || 1)) * (hi - lo);
    let ticks = [];
    if (spec.log) for (let e = Math.round(fa); e <= Math.round(fb); e++) ticks.push(Math.pow(10, e));
    else {
      const raw = (b - a) / 5, p = Math.pow(10, Math.floor(Math.log10(raw))), r = raw / p;
      const s = (r < 1.5 ? 1 : r < 3.5 ? 2 : r < 7.5 ? 5 : 10) * p;
      for (let t = Math.ceil(a / s - 1e-9) * s; t <= b + s * 1e-9; t += s)
        ticks.push(Math.abs(t) < s * 1e-9 ? 0 : +t.toPrecision(12));
    }
    if (spec.integer) ticks = ticks.filter((t) => Number.isInteger(t));
    return { px, ticks, a, b, ok: (v) => finite(v) && (!spec.log || v > 0) };
  }

  // plot(container, {title, w, h, x: {label, log}, y: {label, log}, y2, series: [...]})
  // series: {type: line|points|stairs|band|vline|hline|box|bars, ...} (bars: stacked on `base`); a series on the right axis has y2: true
  function plot(box, o) {
    const W = o.w || 460, H = o.h || 280, m = { l: 62, r: o.y2 ? 58 : 14, t: o.title ? 24 : 10, b: 44 };
    const svg = el("svg", { viewBox: `0 0 ${W} ${H}`, class: "plot", role: "img", "aria-label": o.title || "" }, box);
    const xs = [], ys = [], y2s = [];
    for (const s of o.series) {
      const yy = s.y2 ? y2s : ys;
      (s.x || []).forEach((v) => xs.push(v)); (s.y || []).forEach((v) => yy.push(v));
      if (s.edges) xs.push(...s.edges);
      if (s.counts) yy.push(0, ...s.counts);
      if (s.base) yy.push(0, ...s.y.map((v, j) => v + s.base[j]));
      if (s.hi) yy.push(...s.hi.filter(finite));
      if (s.boxes) s.boxes.forEach((b) => { xs.push(b.x); yy.push(b.p5, b.p95, b.max); });
      if (s.type === "hline" && finite(s.at)) yy.push(s.at);
    }
    const X = axis(o.x, xs, m.l, W - m.r), Y = axis(o.y, ys, H - m.b, m.t);
    svg.setAttribute("data-y-min", Y.a);
    svg.setAttribute("data-y-max", Y.b);
    const Y2 = o.y2 ? axis(o.y2, y2s, H - m.b, m.t) : null;
    if (o.title) el("text", { x: m.l, y: 15, class: "title" }, svg, o.title);
    const g = el("g", { class: "axes" }, svg);
    for (const t of X.ticks) {
      el("line", { x1: X.px(t), x2: X.px(t), y1: m.t, y2: H - m.b, class: "grid" }, g);
      el("text", { x: X.px(t), y: H - m.b + 14, "text-anchor": "middle" }, g, fmt(t));
    }
    for (const t of Y.ticks) {
      el("line", { x1: m.l, x2: W - m.r, y1: Y.px(t), y2: Y.px(t), class: "grid" }, g);
      el("text", { x: m.l - 5, y: Y.px(t) + 4, "text-anchor": "end" }, g, fmt(t));
    }
    if (Y2) for (const t of Y2.ticks) el("text", { x: W - m.r + 5, y: Y2.px(t) + 4, fill: o.y2.color }, g, fmt(t));
    el("rect", { x: m.l, y: m.t, width: W - m.l - m.r, height: H - m.t - m.b, class: "frame" }, g);
    el("text", { x: (m.l + W - m.r) / 2, y: H - 8, "text-anchor": "middle", class: "label" }, g, o.x.label);
    el("text", { transform: `translate(13 ${(m.t + H - m.b) / 2}) rotate(-90)`, "text-anchor": "middle",
      class: "label", fill: o.y.color }, g, o.y.label);
    if (Y2) el("text", { transform: `translate(${W - 8} ${(m.t + H - m.b) / 2}) rotate(90)`, "text-anchor": "middle",
      class: "label", fill: o.y2.color }, g, o.y2.label);
    const clip = "c" + Math.random().toString(36).slice(2);
    el("rect", { x: m.l, y: m.t, width: W - m.l - m.r, height: H - m.t - m.b }, el("clipPath", { id: clip }, svg));
    const area = el("g", { "clip-path": `url(#${clip})` }, svg);
    const legend = [];
    for (const [i, s] of o.series.entries()) {
      const A = s.y2 ? Y2 : Y, col = s.color || C[i % C.length];
      const pts = (s.x || []).map((x, j) => [x, (s.y || [])[j]]).filter(([x, y]) => X.ok(x) && A.ok(y));
      if (s.type === "line" || s.type === "points") {
        if (s.type === "line" && pts.length > 1)
          el("polyline", { points: pts.map(([x, y]) => `${X.px(x)},${A.px(y)}`).join(" "), stroke: col,
            fill: "none", "stroke-width": 2, "stroke-dasharray": s.dash }, area);
        if (s.markers !== false) for (const [j, [x, y]] of pts.entries()) {
          const dot = el("circle", { cx: X.px(x), cy: A.px(y), r: s.r || 3.5, fill: col, class: "pt",
            "data-x": x, "data-y": y }, area);
          el("title", {}, dot, (s.tips ? s.tips[j] + ": " : "") + `${fmt(x)}, ${fmt(y)}`);
        }
      } else if (s.type === "stairs") {
        const e = s.edges;
        s.counts.forEach((n, j) => {
          if (!X.ok(e[j]) || !X.ok(e[j + 1])) return;
          const bar = el("rect", { x: X.px(e[j]), width: Math.max(X.px(e[j + 1]) - X.px(e[j]), 0.5), y: A.px(n),
            height: A.px(0) - A.px(n), fill: col, opacity: 0.75, class: "bar", "data-count": n }, area);
          el("title", {}, bar, `${fmt(s.raw[j])}–${fmt(s.raw[j + 1])} eV/Å: ${n} frames`);
        });
      } else if (s.type === "bars") {
        const w = Math.min(36, (W - m.l - m.r) / (s.x.length * 1.8));
        s.x.forEach((x, j) => {
          const lo = s.base[j], hi = lo + (s.y[j] || 0);
          if (!X.ok(x) || !(hi > lo)) return;
          const bar = el("rect", { x: X.px(x) - w / 2, width: w, y: A.px(hi), height: A.px(lo) - A.px(hi), fill: col,
            class: "bar", "data-value": s.y[j] }, area);
          el("title", {}, bar, `${s.tips ? s.tips[j] : x}: ${s.label} ${fmt(s.y[j])} ${s.unit || ""}`);
        });
      } else if (s.type === "band") {
        const up = s.x.map((x, j) => [x, s.hi[j]]).filter(([x, y]) => X.ok(x) && A.ok(y));
        const down = s.x.map((x, j) => [x, s.lo[j]]).filter(([x, y]) => X.ok(x) && A.ok(y)).reverse();
        el("polygon", { points: up.concat(down).map(([x, y]) => `${X.px(x)},${A.px(y)}`).join(" "), fill: col,
          opacity: 0.22, stroke: "none" }, area);
      } else if (s.type === "vline" || s.type === "hline") {
        if (!finite(s.at)) continue;
        const v = s.type === "vline";
        el("line", { x1: v ? X.px(s.at) : m.l, x2: v ? X.px(s.at) : W - m.r, y1: v ? m.t : A.px(s.at),
          y2: v ? H - m.b : A.px(s.at), stroke: col, "stroke-width": 2, "stroke-dasharray": s.dash || "6 4" }, area);
      } else if (s.type === "box") {
        const w = Math.min(24, (W - m.l - m.r) / (s.boxes.length * 2.5));
        for (const b of s.boxes) {
          if (!finite(b.p25)) continue;
          const x = X.px(b.x), gb = el("g", { class: "box" }, area);
          el("line", { x1: x, x2: x, y1: A.px(b.p5), y2: A.px(b.p95), stroke: "#333" }, gb);
          el("rect", { x: x - w / 2, width: w, y: A.px(b.p75), height: A.px(b.p25) - A.px(b.p75), fill: "#fff",
            stroke: "#333" }, gb);
          el("line", { x1: x - w / 2, x2: x + w / 2, y1: A.px(b.p50), y2: A.px(b.p50), stroke: "#333" }, gb);
          el("title", {}, gb, `iteration ${b.x}: median ${fmt(b.p50)}, quartiles ${fmt(b.p25)}–${fmt(b.p75)}, ` +
            `5–95 % ${fmt(b.p5)}–${fmt(b.p95)} eV/Å`);
        }
      }
      if (s.label) legend.push([s.label, col, s.type]);
    }
    legend.forEach(([text, col, type], i) => {
      const y = m.t + 12 + 15 * i, x = o.legendLeft ? m.l + 8 : W - m.r - 8;
      const block = type === "band" || type === "bars";
      el("rect", { x: o.legendLeft ? x : x - 12, y: y - 8, width: 12, height: block ? 10 : 3, fill: col,
        opacity: type === "band" ? 0.4 : 1 }, svg);
      el("text", { x: o.legendLeft ? x + 16 : x - 16, y: y, "text-anchor": o.legendLeft ? "start" : "end",
        class: "legend" }, svg, text);
    });
    return svg;
  }

  const charts = {
    learning(box, d) {
      const lc = d.learning_curve, tips = lc.iteration.map((i) => "it " + i);
      plot(box, { x: { label: "training labels", integer: true }, y: { label: "held-out force RMSE (eV/Å)",
        min: 0, color: C[0] }, y2: { label: "accurate ratio", min: 0, max: 1, color: C[1] }, legendLeft: false, series: [
        { type: "line", x: lc.n_train_labels, y: lc.force_rmse, label: "held-out force RMSE", tips, color: C[0] },
        { type: "line", x: lc.n_train_labels, y: lc.accurate_ratio, y2: true, dash: "5 3", label: "accurate ratio",
          tips, color: C[1] }] });
    },
    deviation(box, d) {
      for (const h of d.deviation) {
        const cell = document.createElement("figure");
        cell.className = "chart small";
        cell.dataset.iteration = h.iteration;
        box.appendChild(cell);
        const total = h.counts.reduce((a, b) => a + b, 0);
        plot(cell, { w: 340, h: 200, title: `iteration ${h.iteration} (${total} frames)`,
          x: { label: "max force deviation (eV/Å)", log: true }, y: { label: "frames", min: 0 }, series: [
            { type: "stairs", edges: h.plot_edges, raw: h.bin_edges, counts: h.counts, color: C[0] },
            { type: "vline", at: h.trust_lo, color: C[2], label: `trust_lo ${fmt(h.trust_lo)}` },
            { type: "vline", at: h.trust_hi, color: C[1], dash: "2 3", label: `trust_hi ${fmt(h.trust_hi)}` }] });
      }
    },
    calibration(box, d) {
      const all = d.calibration_points;
      if (!all.length) return;
      const pick = document.createElement("select");
      pick.id = "calibration-iteration";
      all.forEach((p, i) => pick.add(new Option("iteration " + p.iteration, i)));
      const want = all.findIndex((p) => p.iteration === charts.calIteration);
      pick.value = want >= 0 ? want : all.length - 1;
      const draw = () => {
        const p = all[+pick.value];
        charts.calIteration = p.iteration;
        box.querySelectorAll("svg").forEach((s) => s.remove());
        const hi = Math.max(...p.x, ...p.y, 1e-6) * 1.1, line = [0, hi / 2, hi];
        const series = [];
        if (finite(p.q)) series.push({ type: "band", x: line, lo: line.map(() => 0), hi: line.map((v) => p.q * v),
          color: C[5], label: `conformal q·k·σ (q ${fmt(p.q)}, ${Math.round(100 * p.empirical_coverage)}% inside)` });
        series.push({ type: "line", x: [0, hi], y: [0, hi], color: "#333", dash: "4 3", label: "error = k·σ",
          markers: false });
        series.push({ type: "points", x: p.x, y: p.y, color: C[1], label: `held-out frames (n ${p.x.length})` });
        plot(box, { w: 400, h: 340, title: `iteration ${p.iteration}: k ${fmt(p.k)}, ρ ${fmt(p.spearman)}`,
          legendLeft: true, x: { label: "calibrated uncertainty k·σ (eV/Å)", min: 0, max: hi },
          y: { label: "max atomic force error (eV/Å)", min: 0, max: hi }, series });
      };
      pick.addEventListener("change", draw);
      box.appendChild(pick);
      draw();
    },
    "calibration-trend"(box, d) {
      const c = d.calibration;
      const qk = c.quantile.map((q, i) => (finite(q) ? q * c.factor[i] : null));
      plot(box, { w: 400, h: 340, x: { label: "iteration", integer: true }, y: { label: "k, q·k", min: 0 },
        y2: { label: "Spearman ρ", min: -1, max: 1, color: C[2] }, legendLeft: true, series: [
          { type: "line", x: c.iteration, y: c.factor, label: "k", color: C[0] },
          { type: "line", x: c.iteration, y: qk, dash: "5 3", label: "q·k", color: C[1] },
          { type: "line", x: c.iteration, y: c.spearman, y2: true, label: "Spearman ρ", color: C[2] }] });
    },
    pool(box, d) {
      const p = d.pool_curve;
      const series = [{ type: "line", x: p.n_labels, y: p.force_rmse, label: "held-out force RMSE",
        tips: p.iteration.map((i) => "it " + i) }];
      if (finite(d.target_force_rmse)) series.push({ type: "hline", at: d.target_force_rmse, color: "#666",
        label: `target ${fmt(d.target_force_rmse)} eV/Å` });
      plot(box, { x: { label: "training labels (oracle calls)", integer: true },
        y: { label: "held-out force RMSE (eV/Å)", log: true }, series });
    },
    cost(box, d) {
      // core-hours per iteration, stacked by what the jobs did (the ledger)
      const rows = d.cost.iterations.filter((r) => r.iteration !== null), its = rows.map((r) => r.iteration);
      const tips = its.map((i) => (i < 0 ? "initial data" : "iteration " + i)), base = its.map(() => 0), series = [];
      [["oracle_core_h", "oracle"], ["training_core_h", "training"], ["exploration_core_h", "exploration"],
        ["other_core_h", "other"]].forEach(([key, label], i) => {
        const y = rows.map((r) => r[key] || 0);
        series.push({ type: "bars", x: its, y, base: base.slice(), label, tips, unit: "core-h", color: C[i] });
        y.forEach((v, j) => { base[j] += v; });
      });
      plot(box, { w: 460, legendLeft: true, x: { label: "iteration (−1: initial data)", integer: true,
        min: Math.min(...its) - 0.6, max: Math.max(...its) + 0.6 }, y: { label: "core-hours", min: 0 }, series });
    },
    nft(box, d) {
      const b = d.nft_boxes.map((r) => ({ ...r, x: r.iteration })), its = b.map((r) => r.x);
      const series = [{ type: "box", boxes: b },
        { type: "line", x: its, y: b.map((r) => r.max), label: "max atomic uncertainty", color: C[1] },
        { type: "line", x: its, y: b.map((r) => r.threshold), dash: "5 3", label: "selection threshold",
          color: C[0] }];
      if (finite(d.stop_delta)) series.push({ type: "hline", at: d.stop_delta, color: "#000",
        label: `stop_delta ${fmt(d.stop_delta)}` });
      plot(box, { w: 560, x: { label: "iteration", integer: true, min: Math.min(...its) - 0.5,
        max: Math.max(...its) + 0.5 }, y: { label: "atomic force uncertainty (eV/Å)", log: true }, series });
    },
  };

  function draw(root) {
    const src = root.querySelector("#chart-data");
    if (!src) return;
    const d = JSON.parse(src.textContent);
    root.querySelectorAll("[data-chart]").forEach((box) => {
      try { charts[box.dataset.chart](box, d); } catch (e) { box.textContent = "figure failed: " + e; }
    });
  }

  function live() {
    const main = document.getElementById("live"), state = document.getElementById("live-state");
    if (!main || !main.dataset.stampUrl) return;
    let stamp = main.dataset.stamp || null, busy = false;
    const every = +main.dataset.refreshMs || 2000;
    const say = (text, cls) => { state.textContent = text; state.className = "live-state " + (cls || ""); };
    async function poll() {
      if (busy) return;
      busy = true;
      try {
        const r = await fetch(main.dataset.stampUrl, { cache: "no-store" });
        const j = await r.json();
        if (!r.ok) { say("⚠ " + j.error, "bad"); return; }
        if (main.dataset.recover === "reload") { location.reload(); return; }
        if (j.stamp !== stamp && main.dataset.bodyUrl) {
          const b = await fetch(main.dataset.bodyUrl, { cache: "no-store" });
          if (b.ok) { main.innerHTML = await b.text(); draw(main); stamp = j.stamp; main.dataset.stamp = stamp; }
        }
        say("live · " + new Date().toLocaleTimeString(), "ok");
      } catch (e) {
        say("⚠ server not answering", "bad");
      } finally { busy = false; }
    }
    setInterval(poll, every);
    say("live", "ok");
  }

  document.addEventListener("DOMContentLoaded", () => { draw(document); live(); });
  window.almat = { plot, draw, axis };
})();
