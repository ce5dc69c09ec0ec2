"""The status page at ``GET /``: three live charts drawn on plain canvases from
``GET /v1/stats`` (no external scripts or fonts, so it works on machines without a CDN)."""

STATUS_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>gearshift serve</title>
<style>
 body{font-family:system-ui,sans-serif;margin:1.5em;color:#222;background:#fafafa}
 h1{font-size:1.3em;margin:0 0 .3em} .row{display:flex;flex-wrap:wrap;gap:1em}
 figure{margin:0;background:#fff;border:1px solid #ddd;padding:.5em}
 figcaption{font-size:.9em;color:#555} #summary{margin:.5em 0 1em;font-size:.95em}
 canvas{display:block}
</style></head>
<body data-updates="0">
<h1>gearshift serve</h1>
<div id="summary">waiting for data&hellip;</div>
<div class="row">
 <figure><figcaption>arrival rate (texts/s)</figcaption>
  <canvas id="rate" width="460" height="200"></canvas></figure>
 <figure><figcaption>p99 latency (ms), SLO dashed</figcaption>
  <canvas id="p99" width="460" height="200"></canvas></figure>
 <figure><figcaption>gear in use</figcaption>
  <canvas id="gear" width="460" height="200"></canvas></figure>
</div>
<script>
"use strict";
function axes(ctx, w, h, ymax, left, fmt){
  ctx.clearRect(0,0,w,h); ctx.fillStyle="#fff"; ctx.fillRect(0,0,w,h);
  ctx.strokeStyle="#ccc"; ctx.fillStyle="#666"; ctx.font="11px sans-serif"; ctx.lineWidth=1;
  for(let i=0;i<=4;i++){const y=10+(h-30)*(1-i/4); ctx.beginPath(); ctx.moveTo(left,y);
    ctx.lineTo(w-5,y); ctx.stroke(); ctx.fillText(fmt(ymax*i/4),2,y+4);}
}
function line(id, xs, ys, ymax, color, extra){
  const c=document.getElementById(id), ctx=c.getContext("2d"), w=c.width, h=c.height, left=46;
  ymax = ymax>0 ? ymax : 1;
  axes(ctx,w,h,ymax,left,v=>v>=100?v.toFixed(0):v.toFixed(1));
  const x0=xs.length?xs[0]:0, x1=xs.length?xs[xs.length-1]:1, span=Math.max(1,x1-x0);
  const X=t=>left+(w-left-5)*(t-x0)/span, Y=v=>10+(h-30)*(1-Math.min(v,ymax)/ymax);
  if(extra){extra(ctx,X,Y,w,left);}
  ctx.strokeStyle=color; ctx.lineWidth=2; ctx.beginPath(); let started=false;
  for(let i=0;i<xs.length;i++){ if(ys[i]===null){started=false;continue;}
    if(!started){ctx.moveTo(X(xs[i]),Y(ys[i]));started=true;} else ctx.lineTo(X(xs[i]),Y(ys[i])); }
  ctx.stroke(); ctx.fillStyle="#666"; ctx.fillText((x1-x0)+" s", w-40, h-5);
  c.dataset.points=String(ys.filter(v=>v!==null).length);
}
function gearChart(xs, idx, names){
  const c=document.getElementById("gear"), ctx=c.getContext("2d"), w=c.width, h=c.height, left=70;
  ctx.clearRect(0,0,w,h); ctx.fillStyle="#fff"; ctx.fillRect(0,0,w,h);
  ctx.font="11px sans-serif"; const n=Math.max(1,names.length);
  const Y=i=>10+(h-30)*(i+0.5)/n;
  names.forEach((g,i)=>{ctx.fillStyle="#666"; ctx.fillText(g.slice(0,10),2,Y(i)+4);
    ctx.strokeStyle="#eee"; ctx.beginPath(); ctx.moveTo(left,Y(i)); ctx.lineTo(w-5,Y(i)); ctx.stroke();});
  const x0=xs.length?xs[0]:0, x1=xs.length?xs[xs.length-1]:1, span=Math.max(1,x1-x0);
  const X=t=>left+(w-left-5)*(t-x0)/span;
  ctx.strokeStyle="#2a7"; ctx.lineWidth=3; ctx.beginPath(); let prev=null;
  for(let i=0;i<xs.length;i++){ const g=idx[i]; if(g===null) continue;
    if(prev===null) ctx.moveTo(X(xs[i]),Y(g)); else {ctx.lineTo(X(xs[i]),Y(prev)); ctx.lineTo(X(xs[i]),Y(g));}
    prev=g; }
  if(prev!==null) ctx.lineTo(X(x1),Y(prev));
  ctx.stroke(); c.dataset.points=String(idx.filter(v=>v!==null).length);
}
let lastGear=null;
async function refresh(){
  try{
    const r=await fetch("v1/stats",{cache:"no-store"}); const s=await r.json();
    const xs=s.series.map(b=>b.t), rate=s.series.map(b=>b.arrivals), p99=s.series.map(b=>b.p99_ms);
    const gi=s.series.map(b=>{ if(b.gear!==null) lastGear=b.gear; return lastGear===null?null:s.gears.indexOf(lastGear); });
    line("rate", xs, rate, Math.max(1,...rate)*1.1, "#36c");
    const pmax=Math.max(s.slo_ms*1.5, ...p99.filter(v=>v!==null));
    line("p99", xs, p99, pmax, "#c33", (ctx,X,Y,w,left)=>{ctx.save(); ctx.setLineDash([5,4]);
      ctx.strokeStyle="#999"; ctx.beginPath(); ctx.moveTo(left,Y(s.slo_ms)); ctx.lineTo(w-5,Y(s.slo_ms)); ctx.stroke(); ctx.restore();});
    gearChart(xs, gi, s.gears);
    document.getElementById("summary").textContent =
      "gear in use: "+s.gear_in_use+" | queue: "+s.queue_depth+" texts | arrivals: "+
      s.arrival_rate.toFixed(1)+"/s | shifts: "+s.shifts+" | SLO: "+s.slo_ms+" ms";
    document.body.dataset.updates=String(Number(document.body.dataset.updates)+1);
  }catch(e){ document.getElementById("summary").textContent="no data: "+e; }
}
refresh(); setInterval(refresh, 1000);
</script>
</body></html>
"""
