// Colour maps as 16 evenly spaced stops (sampled from matplotlib), linearly interpolated into 256-entry tables.
const STOPS = {
  inferno: "000004 0c0826 240c4f 420a68 5d126e 781c6d 932667 ae305c c73e4c dd513a ed6925 f8850f fca50a fac62d f2e661 fcffa4",
  viridis: "440154 481a6c 472f7d 414487 39568c 31688e 2a788e 23888e 1f988b 22a884 35b779 54c568 7ad151 a5db36 d2e21b fde725",
  magma: "000004 0b0924 20114b 3b0f70 57157e 721f81 8c2981 a8327d c43c75 de4968 f1605d fa7f5e fe9f6d febf84 fddea0 fcfdbf",
  turbo: "30123b 4143a7 4771e9 3e9bfe 22c5e2 1ae4b6 46f884 88ff4e b9f635 e1dd37 faba39 fd8d27 f05b12 d63506 af1801 7a0403",
  gray: "000000 ffffff",
};

export const COLORMAPS = Object.keys(STOPS);

/** A Uint8Array of 256 RGB triples for the named colour map. */
export function lookupTable(name) {
  const stops = (STOPS[name] ?? STOPS.inferno).split(" ").map((hex) => [0, 2, 4].map((i) => parseInt(hex.slice(i, i + 2), 16)));
  const table = new Uint8Array(256 * 3);
  for (let i = 0; i < 256; i++) {
    const position = (i / 255) * (stops.length - 1);
    const low = Math.min(Math.floor(position), stops.length - 2);
    const frac = position - low;
    for (let c = 0; c < 3; c++) {
      table[i * 3 + c] = Math.round(stops[low][c] * (1 - frac) + stops[low + 1][c] * frac);
    }
  }
  return table;
}
