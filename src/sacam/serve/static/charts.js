// sacam serve: the deletion and insertion charts, drawn sharp at the screen's pixel density.
"use strict";

export const COLOURS = ["#1f6feb", "#d1242f", "#1a7f37", "#9a6700", "#8250df", "#bf3989", "#0a7c86", "#57606a"];

function setUp(canvas) {
  // the drawing buffer follows the canvas's CSS size times devicePixelRatio
  const ratio = window.devicePixelRatio || 1;
  const rect = canvas.getBoundingClientRect();
  const W = Math.max(240, Math.round(rect.width || 420)), H = Math.max(150, Math.round(rect.height || 260));
  canvas.width = Math.round(W * ratio);
  canvas.height = Math.round(H * ratio);
  const ctx = canvas.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.clearRect(0, 0, W, H);
  return { ctx, W, H };
}

function axes(ctx, W, H, box, xLabel) {
  const { L, R, T, B } = box;
  ctx.strokeStyle = "#8c959f"; ctx.fillStyle = "#3d454d"; ctx.lineWidth = 1;
  ctx.font = "12px system-ui, sans-serif";
  ctx.beginPath(); ctx.moveTo(L, T); ctx.lineTo(L, H - B); ctx.lineTo(W - R, H - B); ctx.stroke();
  ctx.textAlign = "right"; ctx.textBaseline = "middle";
  for (const v of [0, 0.25, 0.5, 0.75, 1]) {
    const y = T + (1 - v) * (H - T - B);
    ctx.fillText(v.toFixed(2), L - 6, y);
    ctx.strokeStyle = "#e4e8ec"; ctx.beginPath(); ctx.moveTo(L + 1, y); ctx.lineTo(W - R, y); ctx.stroke();
  }
  ctx.textAlign = "center"; ctx.textBaseline = "top";
  for (const v of [0, 0.25, 0.5, 0.75, 1]) ctx.fillText(v.toFixed(2), L + v * (W - L - R), H - B + 5);
  ctx.fillText(xLabel, L + (W - L - R) / 2, H - 18);
  ctx.save();
  ctx.translate(14, T + (H - T - B) / 2); ctx.rotate(-Math.PI / 2);
  ctx.textBaseline = "middle"; ctx.fillText("class probability", 0, 0);
  ctx.restore();
}

export function clearCharts(canvases) {
  for (const canvas of canvases) setUp(canvas);
}

// draw each method's curve; the legend is HTML below the charts, so it never covers a curve
export function drawCurves(res, canvases, legend) {
  const labels = { deletion: "fraction of pixels deleted", insertion: "fraction of pixels inserted" };
  for (const [kind, canvas] of Object.entries(canvases)) {
    const { ctx, W, H } = setUp(canvas);
    const box = { L: 58, R: 22, T: 12, B: 44 };
    axes(ctx, W, H, box, labels[kind]);
    res.methods.forEach((m, i) => {
      ctx.strokeStyle = COLOURS[i % COLOURS.length]; ctx.lineWidth = 2;
      ctx.setLineDash(i >= COLOURS.length ? [5, 3] : []);
      ctx.beginPath();
      m[kind].curve.forEach((p, t) => {
        const x = box.L + res.fractions[t] * (W - box.L - box.R), y = box.T + (1 - p) * (H - box.T - box.B);
        if (t === 0) ctx.moveTo(x, y); else ctx.lineTo(x, y);
      });
      ctx.stroke();
    });
  }
  legend.replaceChildren();
  res.methods.forEach((m, i) => {
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.style.background = COLOURS[i % COLOURS.length];
    const item = document.createElement("li");
    item.append(swatch, `${m.method}: deletion ${m.deletion.auc.toFixed(3)}, insertion ${m.insertion.auc.toFixed(3)}`);
    legend.append(item);
  });
}
