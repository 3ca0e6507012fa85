package vm

const sysSeccompNr = 277
