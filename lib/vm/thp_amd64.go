package vm

const sysSeccompNr = 317
