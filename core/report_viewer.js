// sciffusion report: a small interactive 3D view of molecules on a <canvas>, no library.
// Each <canvas class="molecule-view" data-mol="ID"> draws the molecule ID of the JSON block
// <script type="application/json" id="molecules">{ID: {atoms: [[symbol, x, y, z], ...], bonds: [[i, j, order], ...]}}.
// Drag to rotate, wheel to zoom, double-click to reset. Atoms are shaded spheres drawn back to
// front (painter's algorithm) with their bonds; double and triple bonds are drawn as 2 or 3 strokes.
(function () {
  "use strict";
  var COLOURS = {H: "#e8e8e8", C: "#555555", N: "#3050f8", O: "#ff0d0d", F: "#90e050", S: "#e0c030",
                 Cl: "#1ff01f", Br: "#a62929", P: "#ff8000", I: "#940094", B: "#ffb5b5"};
  var RADII = {H: 0.31, C: 0.76, N: 0.71, O: 0.66, F: 0.57, S: 1.05, Cl: 1.02, Br: 1.2, P: 1.07, I: 1.39, B: 0.84};

  function centred(atoms) {
    var n = atoms.length, c = [0, 0, 0], i, k;
    for (i = 0; i < n; i++) for (k = 0; k < 3; k++) c[k] += atoms[i][k + 1] / n;
    var pts = [], extent = 0.5;
    for (i = 0; i < n; i++) {
      var p = [atoms[i][1] - c[0], atoms[i][2] - c[1], atoms[i][3] - c[2]];
      extent = Math.max(extent, Math.sqrt(p[0] * p[0] + p[1] * p[1] + p[2] * p[2]));
      pts.push(p);
    }
    return {points: pts, extent: extent};
  }

  function rotate(p, yaw, pitch) {  // about y, then about x
    var cy = Math.cos(yaw), sy = Math.sin(yaw), cp = Math.cos(pitch), sp = Math.sin(pitch);
    var x = cy * p[0] + sy * p[2], z = -sy * p[0] + cy * p[2];
    return [x, cp * p[1] - sp * z, sp * p[1] + cp * z];
  }

  function View(canvas, mol) {
    this.canvas = canvas;
    this.ctx = canvas.getContext("2d");
    this.atoms = mol.atoms;
    this.bonds = mol.bonds || [];
    var c = centred(mol.atoms);
    this.points = c.points;
    this.extent = c.extent;
    this.reset();
    this.listen();
    this.draw();
  }

  View.prototype.reset = function () { this.yaw = 0.6; this.pitch = -0.4; this.zoom = 1.0; };

  View.prototype.listen = function () {
    var self = this, last = null;
    this.canvas.addEventListener("mousedown", function (e) { last = [e.clientX, e.clientY]; });
    window.addEventListener("mouseup", function () { last = null; });
    window.addEventListener("mousemove", function (e) {
      if (!last) return;
      self.yaw += (e.clientX - last[0]) * 0.01;
      self.pitch += (e.clientY - last[1]) * 0.01;
      last = [e.clientX, e.clientY];
      self.draw();
    });
    this.canvas.addEventListener("wheel", function (e) {
      e.preventDefault();
      self.zoom = Math.min(8, Math.max(0.25, self.zoom * (e.deltaY < 0 ? 1.1 : 1 / 1.1)));
      self.draw();
    }, {passive: false});
    this.canvas.addEventListener("dblclick", function () { self.reset(); self.draw(); });
  };

  View.prototype.draw = function () {
    var ctx = this.ctx, w = this.canvas.width, h = this.canvas.height;
    var scale = this.zoom * 0.42 * Math.min(w, h) / this.extent;
    var self = this, screen = this.points.map(function (p) {
      var r = rotate(p, self.yaw, self.pitch);
      return [w / 2 + scale * r[0], h / 2 - scale * r[1], r[2]];
    });
    ctx.fillStyle = "#ffffff";
    ctx.fillRect(0, 0, w, h);
    var order = screen.map(function (_, i) { return i; }).sort(function (a, b) { return screen[a][2] - screen[b][2]; });
    var drawn = {};
    order.forEach(function (i) {
      self.bonds.forEach(function (b) {  // a bond is drawn with the farther of its two atoms
        var j = b[0] === i ? b[1] : (b[1] === i ? b[0] : -1);
        if (j < 0 || drawn[b[0] + "-" + b[1]] || screen[j][2] > screen[i][2]) return;
        drawn[b[0] + "-" + b[1]] = true;
        self.bond(screen[i], screen[j], b[2]);
      });
      self.atom(screen[i], self.atoms[i][0], scale);
    });
    this.canvas.dataset.drawn = String(order.length);
  };

  View.prototype.bond = function (a, b, order) {
    var ctx = this.ctx, dx = b[0] - a[0], dy = b[1] - a[1], len = Math.sqrt(dx * dx + dy * dy) || 1;
    var nx = -dy / len, ny = dx / len, strokes = order >= 2.5 ? 3 : (order >= 1.5 ? 2 : 1), gap = 3.2;
    ctx.strokeStyle = "#777777";
    ctx.lineWidth = strokes > 1 ? 1.8 : 2.6;
    for (var s = 0; s < strokes; s++) {
      var off = (s - (strokes - 1) / 2) * gap;
      ctx.beginPath();
      ctx.moveTo(a[0] + nx * off, a[1] + ny * off);
      ctx.lineTo(b[0] + nx * off, b[1] + ny * off);
      ctx.stroke();
    }
  };

  View.prototype.atom = function (p, symbol, scale) {
    var ctx = this.ctx, r = Math.max(2.5, 0.45 * (RADII[symbol] || 0.8) * scale);
    var g = ctx.createRadialGradient(p[0] - r / 3, p[1] - r / 3, r / 6, p[0], p[1], r);
    g.addColorStop(0, "#ffffff");
    g.addColorStop(1, COLOURS[symbol] || "#ff1493");
    ctx.beginPath();
    ctx.arc(p[0], p[1], r, 0, 2 * Math.PI);
    ctx.fillStyle = g;
    ctx.fill();
    ctx.strokeStyle = "rgba(0,0,0,0.35)";
    ctx.lineWidth = 0.8;
    ctx.stroke();
  };

  function start() {
    var block = document.getElementById("molecules");
    if (!block) return;
    var mols = JSON.parse(block.textContent);
    var views = [];
    document.querySelectorAll("canvas.molecule-view").forEach(function (canvas) {
      var mol = mols[canvas.dataset.mol];
      if (mol) views.push(new View(canvas, mol));
    });
    window.sciffusionViews = views.length;
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
