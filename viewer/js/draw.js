// Canvas drawing: the image aligned to the maps, colour-mapped maps upsampled nearest-neighbour by
// the patch size (one grid cell = one patch, pixel for pixel), and mask outlines.

import { range } from "./maps.js";

/** The image as the server saw it: resized to ``resized`` [H, W], then cropped at the bottom/right
 * to ``cropped`` [H, W] (the server's image_size). Returns a canvas of the cropped size. */
export function alignedImage(bitmap, resized, cropped) {
  const canvas = document.createElement("canvas");
  [canvas.height, canvas.width] = cropped;
  const ctx = canvas.getContext("2d");
  ctx.imageSmoothingQuality = "high";
  ctx.drawImage(bitmap, 0, 0, resized[1], resized[0]); // what falls outside the canvas is the crop
  return canvas;
}

/** A map (h * w) coloured through ``lut`` onto a canvas of the grid's size (one pixel per patch). */
export function colourMap(map, h, w, lut, canvas = document.createElement("canvas")) {
  canvas.width = w;
  canvas.height = h;
  const [low, high] = range(map);
  const scale = high > low ? 255 / (high - low) : 0;
  const pixels = new ImageData(w, h);
  for (let i = 0; i < map.length; i++) {
    const k = Math.round((map[i] - low) * scale) * 3;
    pixels.data.set([lut[k], lut[k + 1], lut[k + 2], 255], i * 4);
  }
  canvas.getContext("2d").putImageData(pixels, 0, 0);
  return canvas;
}

/** Three maps (h * w each, values in [0, 1]) as the red, green and blue of a canvas of the grid's size. */
export function colourImage([red, green, blue], h, w, canvas = document.createElement("canvas")) {
  canvas.width = w;
  canvas.height = h;
  const pixels = new ImageData(w, h);
  const byte = (v) => Math.round(Math.min(1, Math.max(0, v)) * 255);
  for (let i = 0; i < red.length; i++) pixels.data.set([byte(red[i]), byte(green[i]), byte(blue[i]), 255], i * 4);
  canvas.getContext("2d").putImageData(pixels, 0, 0);
  return canvas;
}

/** image, then the coloured map scaled by the patch size (nearest) at ``opacity``, on ``ctx``. */
export function overlay(ctx, image, mapCanvas, opacity) {
  const { width, height } = ctx.canvas;
  ctx.globalAlpha = 1;
  ctx.drawImage(image, 0, 0);
  ctx.globalAlpha = opacity;
  ctx.imageSmoothingEnabled = false;
  ctx.drawImage(mapCanvas, 0, 0, width, height);
  ctx.globalAlpha = 1;
}

/** Mask outline segments (patch units) in pixels. */
export function outline(ctx, segments, patch, colour = "#00ff66") {
  ctx.beginPath();
  for (const [x0, y0, x1, y1] of segments) {
    ctx.moveTo(x0 * patch, y0 * patch);
    ctx.lineTo(x1 * patch, y1 * patch);
  }
  ctx.strokeStyle = colour;
  ctx.lineWidth = Math.max(1, patch / 8);
  ctx.stroke();
}

/** A marker (ring and cross) at pixel [x, y]: the point a similarity map is against. */
export function marker(ctx, [x, y], colour = "#00ff66") {
  ctx.beginPath();
  ctx.arc(x + 0.5, y + 0.5, 6, 0, 2 * Math.PI);
  ctx.moveTo(x - 9, y + 0.5);
  ctx.lineTo(x + 10, y + 0.5);
  ctx.moveTo(x + 0.5, y - 9);
  ctx.lineTo(x + 0.5, y + 10);
  ctx.strokeStyle = colour;
  ctx.lineWidth = 2;
  ctx.stroke();
}
