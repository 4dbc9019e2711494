export const X = 1; // placeholder
